package stream

import (
	"bytes"
	"runtime"
	"slices"
	"testing"
)

// fuzzLimits are the default caps, so that the fuzzer tries long records.
var fuzzLimits = Limits{MaxPFN: 1 << 20}

// FuzzReadStream: no input makes the Reader panic, loop, or allocate much
// more than the input it was given: a record's announced length is not
// allocated before its octets arrive.
func FuzzReadStream(f *testing.F) {
	// Go's fuzzer slows to a crawl on inputs of many KiB: the seeds are
	// small streams (PAGE_DATA of pages without contents but one).
	f.Add(writeStream(f, DomainX86PV, withoutPageContents(pvRecords(), TypeSharedInfo)))
	f.Add(writeStream(f, DomainX86HVM, withoutPageContents(hvmRecords())))
	hvm := hvmRecords()
	f.Add(writeStream(f, DomainX86HVM, append(hvm[:3:3], &PageData{Pages: []Page{{PFN: 5, Data: page(1)}}})))
	hdr := writeStreamNoRecords(DomainX86HVM)
	f.Add(hdr)
	f.Add(appendRaw(bytes.Clone(hdr), 0x80000001, []byte{1, 2, 3}))
	f.Add(appendRaw(rawStream(DomainX86HVM, StaticDataEnd{}), TypePageData,
		[]byte{1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xF0}))
	f.Fuzz(func(t *testing.T, b []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		readFuzzInput(t, b)
		runtime.ReadMemStats(&after)
		before = after
		// Each record costs at most a few times its octets (its body and
		// the decoded Go values); 1 MiB covers the fixed costs (bufio).
		if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20+64*uint64(len(b)) {
			t.Fatalf("reading %d octets allocated %d", len(b), n)
		}
	})
}

func readFuzzInput(t *testing.T, b []byte) {
	r, err := NewReader(bytes.NewReader(b), fuzzLimits)
	if err != nil {
		return
	}
	// Every record takes at least 8 octets: more calls than that is a loop.
	for range len(b)/8 + 2 {
		rec, err := r.Next()
		if err != nil {
			if _, err2 := r.Next(); err2 != err {
				t.Fatalf("Next after %v returned %v", err, err2)
			}
			return
		}
		if rec.Type() == TypeEnd {
			return
		}
	}
	t.Fatalf("%d octets gave more than %d records", len(b), len(b)/8+1)
}

// withoutPageContents drops the records of the given types and turns the
// pages of PAGE_DATA records into pages without contents (XTAB).
func withoutPageContents(recs []Record, drop ...RecordType) []Record {
	var out []Record
	for _, r := range recs {
		if slices.Contains(drop, r.Type()) {
			continue
		}
		if p, ok := r.(*PageData); ok {
			pages := make([]Page, len(p.Pages))
			for i, pg := range p.Pages {
				pages[i] = Page{PFN: pg.PFN, Type: PageXTab}
			}
			r = &PageData{Pages: pages}
		}
		out = append(out, r)
	}
	return out
}
