package service

import (
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

// FuzzSpecFromPB feeds arbitrary wire bytes through the API's spec
// conversion: it must never panic, and a spec it accepts must convert back
// to the same message (nothing lost or invented on the way to the core).
func FuzzSpecFromPB(f *testing.F) {
	seed, err := proto.Marshal(fullSpec())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte{})
	bad, _ := proto.Marshal(&pb.VMSpec{Type: 9, Disks: []*pb.Disk{{Mode: 5}}})
	f.Add(bad)
	f.Fuzz(func(t *testing.T, b []byte) {
		var in pb.VMSpec
		if err := proto.Unmarshal(b, &in); err != nil {
			return
		}
		spec, err := SpecFromPB(&in, "spec")
		if err != nil {
			return
		}
		out := SpecToPB(spec)
		// Empty maps and lists are the same as absent ones on the wire.
		norm := func(s *pb.VMSpec) *pb.VMSpec {
			s = proto.Clone(s).(*pb.VMSpec)
			s.ProtoReflect().SetUnknown(nil)
			if len(s.Platform) == 0 {
				s.Platform = nil
			}
			if len(s.XenstoreData) == 0 {
				s.XenstoreData = nil
			}
			for _, d := range s.Disks {
				d.ProtoReflect().SetUnknown(nil)
			}
			for _, n := range s.Nics {
				n.ProtoReflect().SetUnknown(nil)
			}
			return s
		}
		if !proto.Equal(norm(&in), norm(out)) {
			t.Fatalf("round trip changed the spec:\n in  %v\n out %v", &in, out)
		}
	})
}

// GetVM's devices carry their counters when the core read them, none when
// it did not, and the reason when it could not.
func TestDeviceStatesToPBCounters(t *testing.T) {
	out := deviceStatesToPB([]domain.DeviceState{
		{Record: devices.Record{Kind: devices.KindVBD, Device: "xvda"}, Counters: &devices.Counters{ReadRequests: 3, WriteBytes: 4096}},
		{Record: devices.Record{Kind: devices.KindVIF, VIF: "vif1.0"}, Counters: &devices.Counters{TxPackets: 7, RxDrops: 2}},
		{Record: devices.Record{Kind: devices.KindVIF, VIF: "vif1.1"}},
		{Record: devices.Record{Kind: devices.KindVIF, VIF: "vif1.2"}, CountersError: "no"},
	})
	if c := out[0].GetCounters(); c.GetReadRequests() != 3 || c.GetWriteBytes() != 4096 {
		t.Errorf("disk counters %v", c)
	}
	if c := out[1].GetCounters(); c.GetTxPackets() != 7 || c.GetRxDrops() != 2 {
		t.Errorf("NIC counters %v", c)
	}
	if out[2].Counters != nil || out[2].GetCountersError() != "" || out[3].Counters != nil || out[3].GetCountersError() != "no" {
		t.Errorf("unread counters %v, %v", out[2], out[3])
	}
}
