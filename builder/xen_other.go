//go:build !linux

package builder

import (
	"fmt"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

func opsFor(hv xenctrl.Hypervisor) (Ops, error) {
	if h, ok := hv.(Ops); ok {
		return h, nil
	}
	return nil, fmt.Errorf("builder: cannot build guests on a %q hypervisor (need real Xen on Linux)", hv.Kind())
}
