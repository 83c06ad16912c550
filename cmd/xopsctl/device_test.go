package main

import (
	"testing"

	"google.golang.org/protobuf/proto"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

func TestParseDiskFlag(t *testing.T) {
	rw, ro := apiv1.DiskMode_DISK_MODE_RW, apiv1.DiskMode_DISK_MODE_RO
	for in, want := range map[string]*apiv1.Disk{
		"xvda:/srv/a.img":         {Device: "xvda", Path: "/srv/a.img", Mode: rw},
		"xvda:/srv/a.img:rw":      {Device: "xvda", Path: "/srv/a.img", Mode: rw},
		"xvdb:/srv/b.img:ro":      {Device: "xvdb", Path: "/srv/b.img", Mode: ro},
		"xvdc:/dev/vg0/lv:ro":     {Device: "xvdc", Path: "/dev/vg0/lv", Mode: ro},
		"hda:/srv/with:colon.img": nil, // ":colon.img" is no mode
		"xvda":                    nil,
		":/srv/a.img":             nil,
		"xvda:":                   nil,
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
