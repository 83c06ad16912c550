package builder

import (
	"fmt"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

func pvOpsFor(hv xenctrl.Hypervisor) (PVOps, error) {
	switch h := hv.(type) {
	case PVOps:
		return h, nil
	case *xenctrl.Xen:
		return XenOps{h}, nil
	}
	return nil, fmt.Errorf("builder: cannot build PV guests on a %q hypervisor (need real Xen)", hv.Kind())
}
