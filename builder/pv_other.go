//go:build !linux

package builder

import (
	"fmt"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

func pvOpsFor(hv xenctrl.Hypervisor) (PVOps, error) {
	if h, ok := hv.(PVOps); ok {
		return h, nil
	}
	return nil, fmt.Errorf("builder: cannot build PV guests on a %q hypervisor (need real Xen on Linux)", hv.Kind())
}
