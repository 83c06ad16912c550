package main

import (
	"testing"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

// A VM whose guest suspended itself shows it in the power column and in
// vm get, not as a plain pause.
func TestVMPowerShowsGuestSuspend(t *testing.T) {
	vm := &apiv1.VM{PowerState: apiv1.PowerState_POWER_STATE_PAUSED}
	if got := vmPower(vm); got != "paused" {
		t.Errorf("paused VM: %q", got)
	}
	vm.DomainSuspended = true
	if got := vmPower(vm); got != "paused (guest suspended)" {
		t.Errorf("suspended VM: %q", got)
	}
	if row := vmRow(vm); row[3] != "paused (guest suspended)" {
		t.Errorf("vm list row: %q", row)
	}
}
