package simhost

import (
	"reflect"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

func TestInfoCodecRoundTrip(t *testing.T) {
	in := []xenctrl.DomainInfo{
		{Domid: 0, Running: true, TotPages: 262144, MaxPages: 1<<32 - 1, CPUTime: 123456789, OnlineVCPUs: 8, MaxVCPUID: 7},
		{Domid: 7, Handle: xenctrl.Handle{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, Dying: true, HVM: true, HAP: true,
			Shutdown: true, ShutdownReason: xenctrl.ShutdownCrash, Paused: true, MaxVCPUID: 0xFFFFFFFF, CPUPool: 3},
		{Domid: xenctrl.DomidFirstReserved - 1, Blocked: true},
	}
	out, err := decodeInfos(encodeInfos(in))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n in %+v\nout %+v", in, out)
	}
	if _, err := decodeInfos(make([]byte, infoRecordSize+1)); err == nil {
		t.Fatal("truncated record accepted")
	}
	bad := encodeInfos(in[:1])
	bad[2] = 0x80
	if _, err := decodeInfos(bad); err == nil {
		t.Fatal("unknown flag accepted")
	}
}

func FuzzDecodeInfos(f *testing.F) {
	f.Add(encodeInfos([]xenctrl.DomainInfo{{Domid: 3, Running: true, TotPages: 9}}))
	f.Add([]byte{})
	f.Add(make([]byte, 57))
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := decodeInfos(b)
		if err != nil {
			return
		}
		if re := encodeInfos(ds); string(re) != string(b) {
			t.Fatalf("decode/encode not an identity for %x", b)
		}
	})
}
