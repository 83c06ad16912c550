package devices

import "testing"

func TestVirtualDevice(t *testing.T) {
	for _, c := range []struct {
		name string
		want int
	}{
		{"xvda", 51712},
		{"xvdb", 51728},
		{"xvda1", 51713},
		{"xvda15", 202<<8 | 15},
		{"xvdp", 202<<8 | 15<<4},
		{"xvdq", 1<<28 | 16<<8},
		{"xvda16", 1<<28 | 16},
		{"xvdz", 1<<28 | 25<<8},
		{"xvdaa", 1<<28 | 26<<8},
		{"xvdtq37", 1<<28 | 536<<8 | 37}, // vbd-interface.txt's example
		{"d0", 51712},
		{"d0p0", 51712},
		{"d1p2", 202<<8 | 1<<4 | 2},
		{"d536p37", 1<<28 | 536<<8 | 37},
		{"sda", 2048},
		{"sdb3", 8<<8 | 1<<4 | 3},
		{"sdp15", 8<<8 | 15<<4 | 15},
		{"hda", 768},
		{"hdb", 3<<8 | 1<<6},
		{"hdc2", 22<<8 | 2},
		{"hdd63", 22<<8 | 1<<6 | 63},
	} {
		got, err := VirtualDevice(c.name)
		if err != nil || got != c.want {
			t.Errorf("VirtualDevice(%q) = %d, %v; want %d", c.name, got, err, c.want)
		}
	}
	for _, bad := range []string{
		"", "xvd", "xvda0", "xvda01", "xvda256", "xvdA", "xvda-1", "xvda1x",
		"sdq", "sda16", "hde", "hda64", "vda", "51712", "0x100", "d", "dp1",
		"d01", "d1p", "d1p256", "d1048576", "xvdbbbbbb", "xvda 1", "hd", "sd",
	} {
		if n, err := VirtualDevice(bad); err == nil {
			t.Errorf("VirtualDevice(%q) = %d, want an error", bad, n)
		}
	}
}
