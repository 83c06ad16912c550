package main

import (
	"testing"

	"google.golang.org/protobuf/proto"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

func TestParseDiskFlag(t *testing.T) {
	rw, ro := apiv1.DiskMode_DISK_MODE_RW, apiv1.DiskMode_DISK_MODE_RO
	raw, qcow2 := apiv1.DiskFormat_DISK_FORMAT_RAW, apiv1.DiskFormat_DISK_FORMAT_QCOW2
	for in, want := range map[string]*apiv1.Disk{
		"xvda:/srv/a.img":               {Device: "xvda", Path: "/srv/a.img", Mode: rw, Format: raw},
		"xvda:/srv/a.img:rw":            {Device: "xvda", Path: "/srv/a.img", Mode: rw, Format: raw},
		"xvdb:/srv/b.img:ro":            {Device: "xvdb", Path: "/srv/b.img", Mode: ro, Format: raw},
		"xvdc:/dev/vg0/lv:ro":           {Device: "xvdc", Path: "/dev/vg0/lv", Mode: ro, Format: raw},
		"xvda:/srv/a.qcow2:rw:qcow2":    {Device: "xvda", Path: "/srv/a.qcow2", Mode: rw, Format: qcow2},
		"xvda:/srv/a.qcow2:qcow2":       {Device: "xvda", Path: "/srv/a.qcow2", Mode: rw, Format: qcow2},
		"xvdb:/srv/b.qcow2:ro:qcow2":    {Device: "xvdb", Path: "/srv/b.qcow2", Mode: ro, Format: qcow2},
		"xvdb:/srv/b.img:ro:raw":        {Device: "xvdb", Path: "/srv/b.img", Mode: ro, Format: raw},
		"xvdb:/srv/b.img:ro:vhd":        nil,
		"hda:/srv/with:colon.img":       nil, // ":colon.img" is no mode
		"hda:/srv/with:colon.img:qcow2": nil,
		"xvda":                          nil,
		":/srv/a.img":                   nil,
		"xvda:":                         nil,
	} {
		got, err := parseDiskFlag(in)
		if want == nil {
			if err == nil {
				t.Errorf("%q: parsed as %v, want an error", in, got)
			}
			continue
		}
		if err != nil || !proto.Equal(got, want) {
			t.Errorf("%q: %v, %v; want %v", in, got, err, want)
		}
	}
}

func TestParseNICFlag(t *testing.T) {
	for in, want := range map[string]*apiv1.NIC{
		"":           {},
		"bridge=br0": {Bridge: "br0"},
		"bridge=br0,mac=00:16:3e:00:00:01,mtu=9000": {Bridge: "br0", Mac: "00:16:3e:00:00:01", Mtu: 9000},
		"mtu=big":    nil,
		"colour=red": nil,
		"br0":        nil,
	} {
		got, err := parseNICFlag(in)
		if want == nil {
			if err == nil {
				t.Errorf("%q: parsed as %v, want an error", in, got)
			}
			continue
		}
		if err != nil || !proto.Equal(got, want) {
			t.Errorf("%q: %v, %v; want %v", in, got, err, want)
		}
	}
}

// vm get's plugged-device lines carry the counters GetVM read.
func TestPluggedRowsShowCounters(t *testing.T) {
	vm := &apiv1.VM{Devices: []*apiv1.PluggedDevice{
		{Kind: apiv1.DeviceKind_DEVICE_KIND_DISK, Device: "xvda", Devid: 51712, Path: "/srv/a.img", LoopDevice: "/dev/loop0",
			BackendState: "Connected", FrontendState: "Connected",
			Counters: &apiv1.DeviceCounters{ReadRequests: 12, ReadBytes: 49152, WriteRequests: 2, WriteBytes: 8192}},
		{Kind: apiv1.DeviceKind_DEVICE_KIND_NIC, Devid: 0, Mac: "00:16:3e:00:00:01", Vif: "vif3.0", Bridge: "xenbr0",
			Counters: &apiv1.DeviceCounters{RxPackets: 5, RxBytes: 500, TxPackets: 11, TxBytes: 2048, TxDrops: 1}},
		{Kind: apiv1.DeviceKind_DEVICE_KIND_NIC, Devid: 1, Vif: "vif3.1", CountersError: "netlink says no"},
	}}
	rows := pluggedRows(vm)
	for i, want := range []string{
		"/srv/a.img rw via /dev/loop0 (vbd 51712), backend Connected, frontend Connected, read 12 req 48K, written 2 req 8K, out-of-requests 0",
		"00:16:3e:00:00:01 vif3.0 on xenbr0, rx 5 pkt 500 (0 err, 0 drop), tx 11 pkt 2K (0 err, 1 drop)",
		" vif3.1 on , counters: netlink says no",
	} {
		if i >= len(rows) || rows[i][1] != want {
			t.Errorf("row %d = %q, want %q", i, rows[min(i, len(rows)-1)][1], want)
		}
	}
}
