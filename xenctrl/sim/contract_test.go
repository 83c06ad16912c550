package sim_test

import (
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/xenctrltest"
)

func TestContract(t *testing.T) {
	xenctrltest.RunContract(t, sim.New(sim.Config{TotalMemory: 4 << 30, NrCPUs: 4}))
}

// TestContractSlowRelease runs the contract with a release that lags
// behind destroy, as on a busy Xen host.
func TestContractSlowRelease(t *testing.T) {
	xenctrltest.RunContract(t, sim.New(sim.Config{ReleaseDelay: 20 * time.Millisecond}))
}
