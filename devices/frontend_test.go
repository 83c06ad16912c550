package devices

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const testBackend = "/local/domain/0/backend/vbd/5/51712"

// nodesGetter serves a frontend directory from "key=value" lines and
// counts the reads.
func nodesGetter(lines string, reads *int) nodeGetter {
	m := map[string]string{}
	for _, l := range strings.Split(lines, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return func(key string) (string, bool, error) {
		*reads++
		v, ok := m[key]
		return v, ok, nil
	}
}

func TestParseFrontend(t *testing.T) {
	base := "backend=" + testBackend + "\nstate=4\n"
	wide := ringLimits{maxOrder: 4, maxQueues: 4}
	for _, c := range []struct {
		name  string
		kind  Kind
		lim   ringLimits
		nodes string
		want  []queue
	}{
		{"blkif one page", KindVBD, ringLimits{}, "ring-ref=8\nevent-channel=9", []queue{{[]uint32{8}, []uint32{9}}}},
		{"blkif four pages", KindVBD, wide, "ring-page-order=2\nring-ref0=10\nring-ref1=11\nring-ref2=12\nring-ref3=13\nevent-channel=3",
			[]queue{{[]uint32{10, 11, 12, 13}, []uint32{3}}}},
		{"blkif two queues", KindVBD, wide, "multi-queue-num-queues=2\nqueue-0/ring-ref=8\nqueue-0/event-channel=1\nqueue-1/ring-ref=9\nqueue-1/event-channel=2",
			[]queue{{[]uint32{8}, []uint32{1}}, {[]uint32{9}, []uint32{2}}}},
		{"netif shared channel", KindVIF, ringLimits{}, "tx-ring-ref=8\nrx-ring-ref=9\nevent-channel=131071",
			[]queue{{[]uint32{8, 9}, []uint32{131071}}}},
		{"netif split channels", KindVIF, ringLimits{}, "tx-ring-ref=8\nrx-ring-ref=9\nevent-channel-tx=4\nevent-channel-rx=5",
			[]queue{{[]uint32{8, 9}, []uint32{4, 5}}}},
		// Linux's netfront writes multi-queue-num-queues=1 and its one
		// queue's nodes at the top level (seen on real Xen).
		{"netif one queue", KindVIF, wide, "multi-queue-num-queues=1\ntx-ring-ref=8\nrx-ring-ref=9\nevent-channel-tx=4\nevent-channel-rx=5",
			[]queue{{[]uint32{8, 9}, []uint32{4, 5}}}},
		{"netif two queues", KindVIF, wide, "multi-queue-num-queues=2\nqueue-0/tx-ring-ref=8\nqueue-0/rx-ring-ref=9\nqueue-0/event-channel=1\n" +
			"queue-1/tx-ring-ref=10\nqueue-1/rx-ring-ref=11\nqueue-1/event-channel=2",
			[]queue{{[]uint32{8, 9}, []uint32{1}}, {[]uint32{10, 11}, []uint32{2}}}},
	} {
		var reads int
		fe, err := parseFrontend(c.kind, testBackend, c.lim, true, nodesGetter(base+c.nodes, &reads))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if fe.State != StateConnected || !slices.EqualFunc(fe.Queues, c.want, func(a, b queue) bool {
			return slices.Equal(a.RingRefs, b.RingRefs) && slices.Equal(a.EventChannels, b.EventChannels)
		}) {
			t.Errorf("%s: got %+v, want %+v", c.name, fe, c.want)
		}
	}
	for _, c := range []struct {
		name, nodes, want string
	}{
		{"shared ref", "tx-ring-ref=8\nrx-ring-ref=8\nevent-channel=1", "grant reference 8 is used twice"},
		{"missing rx ring", "tx-ring-ref=8\nevent-channel=1", "rx-ring-ref node is missing"},
		{"half split", "tx-ring-ref=8\nrx-ring-ref=9\nevent-channel-tx=1", "event-channel-rx node is missing"},
		{"negative", "tx-ring-ref=-8\nrx-ring-ref=9\nevent-channel=1", `tx-ring-ref is "-8"`},
		{"hex", "tx-ring-ref=0x10\nrx-ring-ref=9\nevent-channel=1", `tx-ring-ref is "0x10"`},
		{"space", "tx-ring-ref= 10\nrx-ring-ref=9\nevent-channel=1", `tx-ring-ref is " 10"`},
		{"port too big", "tx-ring-ref=8\nrx-ring-ref=9\nevent-channel=131072", `event-channel is "131072"`},
		{"long value", "tx-ring-ref=" + strings.Repeat("9", 300) + "\nrx-ring-ref=9\nevent-channel=1", "…"},
	} {
		var reads int
		_, err := parseFrontend(KindVIF, testBackend, ringLimits{}, true, nodesGetter(base+c.nodes, &reads))
		if !errors.Is(err, ErrBadFrontend) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want ErrBadFrontend with %q", c.name, err, c.want)
		}
	}
}

// maxReads bounds the nodes parseFrontend may read for any input.
const maxReads = capQueues*(1<<capRingPageOrder+2) + 4

// FuzzFrontend: whatever a guest writes, the reader never panics, reads a
// bounded number of nodes, and accepts only well-formed directories.
func FuzzFrontend(f *testing.F) {
	base := "backend=" + testBackend + "\nstate=3\n"
	f.Add(false, true, uint8(0), uint8(1), base+"ring-ref=8\nevent-channel=9")
	f.Add(false, true, uint8(4), uint8(4), base+"ring-page-order=1\nring-ref0=10\nring-ref1=11\nevent-channel=3")
	f.Add(false, true, uint8(4), uint8(4), base+"multi-queue-num-queues=2\nqueue-0/ring-ref=8\nqueue-0/event-channel=1\nqueue-1/ring-ref=9\nqueue-1/event-channel=2")
	f.Add(true, true, uint8(0), uint8(8), base+"tx-ring-ref=8\nrx-ring-ref=9\nevent-channel-tx=4\nevent-channel-rx=5")
	f.Add(true, false, uint8(0), uint8(0), "backend=/elsewhere\nstate=4")
	f.Add(true, true, uint8(9), uint8(200), base+"multi-queue-num-queues=64\nstate=00")
	f.Fuzz(func(t *testing.T, vif, rings bool, maxOrder, maxQueues uint8, nodes string) {
		kind := KindVBD
		if vif {
			kind = KindVIF
		}
		var reads int
		get := nodesGetter(nodes, &reads)
		fe, err := parseFrontend(kind, testBackend, ringLimits{int(maxOrder), int(maxQueues)}, rings, get)
		if reads > maxReads {
			t.Fatalf("read %d nodes (bound %d)", reads, maxReads)
		}
		if err != nil {
			if !errors.Is(err, ErrBadFrontend) {
				t.Fatalf("error not marked ErrBadFrontend: %v", err)
			}
			return
		}
		values := map[string]bool{}
		m := map[string]string{}
		for _, l := range strings.Split(nodes, "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				m[k] = v
				values[v] = true
			}
		}
		if m["backend"] != testBackend {
			t.Fatalf("accepted backend %q", m["backend"])
		}
		if fe.State < 0 || fe.State > StateReconfigured || m["state"] != strconv.Itoa(int(fe.State)) {
			t.Fatalf("accepted state %q as %v", m["state"], fe.State)
		}
		if !rings {
			return
		}
		if n := len(fe.Queues); n < 1 || n > clamp(int(maxQueues), 1, capQueues) {
			t.Fatalf("accepted %d queues (limit %d)", n, maxQueues)
		}
		seen := map[uint32]bool{}
		for _, q := range fe.Queues {
			if len(q.EventChannels) == 0 || len(q.RingRefs) == 0 {
				t.Fatalf("accepted a queue without rings or channels: %+v", q)
			}
			for _, r := range q.RingRefs {
				if r < minGrantRef || r > maxGrantRef || seen[r] || !values[strconv.Itoa(int(r))] {
					t.Fatalf("accepted ring ref %d", r)
				}
				seen[r] = true
			}
			for _, ev := range q.EventChannels {
				if ev < 1 || ev > maxEventChannel || !values[strconv.Itoa(int(ev))] {
					t.Fatalf("accepted event channel %d", ev)
				}
			}
		}
	})
}
