package stream

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// verifyStreamTool returns Xen's verify-stream-v2 (scripts/test fetches it
// with scripts/get-xen-stream-tools and sets XEN_VERIFY_STREAM), or skips;
// under CI=true a missing tool fails the test.
func verifyStreamTool(t *testing.T) string {
	t.Helper()
	tool := os.Getenv("XEN_VERIFY_STREAM")
	if tool == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("XEN_VERIFY_STREAM is not set (scripts/test sets it from scripts/get-xen-stream-tools)")
		}
		t.Skip("XEN_VERIFY_STREAM not set: run scripts/get-xen-stream-tools and set it to the path it prints")
	}
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatalf("verify-stream-v2 needs python3: %v", err)
	}
	return tool
}

// runVerifyStream runs verify-stream-v2 on a stream of the given format
// (libxc or libxl) and returns its output and whether it passed.
func runVerifyStream(t *testing.T, tool, format string, stream []byte) (string, bool) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "stream")
	if err := os.WriteFile(file, stream, 0o600); err != nil {
		t.Fatal(err)
	}
	// The tool's xen.migration package sits in ../lib/python beside its bin/.
	pythonPath := filepath.Join(filepath.Dir(filepath.Dir(tool)), "lib", "python")
	cmd := exec.CommandContext(t.Context(), "python3", tool, "--format", format, "--verbose", "--in", file)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+pythonPath)
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// bigHVMRecords is an HVM image of a 16 MiB guest in full-size PAGE_DATA
// records (1024 pages each, as Xen batches them), one hole of XTAB pages.
func bigHVMRecords() []Record {
	recs := []Record{&X86CPUIDPolicy{Leaves: []CPUIDLeaf{{Leaf: 0}}}, &X86MSRPolicy{MSRs: []MSREntry{{Index: 0xCE}}}, StaticDataEnd{}}
	contents := page(0x5A)
	for batch := uint64(0); batch < 4; batch++ {
		pages := make([]Page, DefaultMaxPagesPerRecord)
		for i := range pages {
			pfn := batch*DefaultMaxPagesPerRecord + uint64(i)
			pages[i] = Page{PFN: pfn, Data: contents}
			if batch == 2 && i < 16 {
				pages[i] = Page{PFN: pfn, Type: PageXTab}
			}
		}
		recs = append(recs, &PageData{Pages: pages})
	}
	return append(recs, hvmRecords()[5:]...)
}

// TestXenVerifyStream: the streams the Writer writes pass Xen's own
// checker, and the checker does refuse a broken one.
func TestXenVerifyStream(t *testing.T) {
	tool := verifyStreamTool(t)
	for name, tc := range map[string]struct {
		domain DomainType
		recs   []Record
		want   []string // in the verbose output
	}{
		"x86 PV":          {DomainX86PV, pvRecords(), []string{"x86 PV from Xen 4.17", "x86 PV vcpu msrs", "Shared info"}},
		"x86 HVM (PVH)":   {DomainX86HVM, hvmRecords(), []string{"x86 HVM from Xen 4.17", "HVM params", "HVM context"}},
		"x86 HVM, 16 MiB": {DomainX86HVM, bigHVMRecords(), []string{"Squashed 4 Page Data records together"}},
	} {
		t.Run(name, func(t *testing.T) {
			out, ok := runVerifyStream(t, tool, "libxc", writeStream(t, tc.domain, tc.recs))
			if !ok {
				t.Fatalf("verify-stream-v2 refused the stream:\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("verify-stream-v2 output lacks %q:\n%s", w, out)
				}
			}
			t.Logf("verify-stream-v2 --format libxc --verbose:\n%s", out)
		})
	}
	t.Run("broken stream refused", func(t *testing.T) {
		b := writeStream(t, DomainX86HVM, hvmRecords())
		b = bytes.Clone(b[:len(b)-8]) // no END
		if out, ok := runVerifyStream(t, tool, "libxc", b); ok {
			t.Fatalf("verify-stream-v2 passed a stream without END:\n%s", out)
		}
	})
}

// TestXenVerifyLibxlStream: the libxl layer around the libxc stream passes
// verify-stream-v2 --format libxl.
func TestXenVerifyLibxlStream(t *testing.T) {
	tool := verifyStreamTool(t)
	for name, b := range map[string][]byte{
		"x86 PV":  writeLibxlStream(t, DomainX86PV, pvRecords()),
		"x86 HVM": writeLibxlStream(t, DomainX86HVM, hvmRecords(), emulatorContext),
	} {
		t.Run(name, func(t *testing.T) {
			out, ok := runVerifyStream(t, tool, "libxl", b)
			if !ok {
				t.Fatalf("verify-stream-v2 refused the stream:\n%s", out)
			}
			for _, w := range []string{"Libxl Header: little endian", "Libxl Record: Libxc context", "Libxl Record: End"} {
				if !strings.Contains(out, w) {
					t.Errorf("verify-stream-v2 output lacks %q:\n%s", w, out)
				}
			}
			t.Logf("verify-stream-v2 --format libxl --verbose:\n%s", out)
		})
	}
}
