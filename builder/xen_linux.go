package builder

import (
	"context"
	"fmt"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// XenOps adapts the real hypervisor to Ops.
type XenOps struct{ *xenctrl.Xen }

// MapGuest maps frames read-write with IOCTL_PRIVCMD_MMAPBATCH_V2.
func (x XenOps) MapGuest(ctx context.Context, d xenctrl.Domid, gfns []uint64) ([]byte, func() error, error) {
	m, err := x.MapForeign(ctx, d, gfns, true)
	if err != nil {
		return nil, nil, err
	}
	return m.Mem, m.Unmap, nil
}

func opsFor(hv xenctrl.Hypervisor) (Ops, error) {
	switch h := hv.(type) {
	case Ops:
		return h, nil
	case *xenctrl.Xen:
		return XenOps{h}, nil
	}
	return nil, fmt.Errorf("builder: cannot build guests on a %q hypervisor (need real Xen)", hv.Kind())
}
