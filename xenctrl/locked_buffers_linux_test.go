package xenctrl

import (
	"context"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNestedLockedBuffers runs hypercalls with the fallback buffers (locked
// anonymous memory) instead of /dev/xen/hypercall mappings.
func TestNestedLockedBuffers(t *testing.T) {
	x, err := Open(nil)
	if err != nil {
		if os.Getenv("NX_NESTED") == "" {
			t.Skipf("no Xen here (NX_NESTED unset): %v", err)
		}
		t.Fatalf("Open: %v", err)
	}
	defer x.Close()
	if x.pc.hcFile == nil {
		t.Log("no /dev/xen/hypercall: locked buffers were already in use")
	} else {
		x.pc.mu.Lock()
		for _, b := range x.pc.free {
			unix.Munmap(b.mem)
		}
		x.pc.free = nil
		x.pc.mu.Unlock()
		x.pc.hcFile.Close()
		x.pc.hcFile = nil
	}
	ctx := context.Background()
	if _, err := x.queryVersion(); err != nil {
		t.Fatalf("xen_version: %v", err)
	}
	if _, err := x.PhysInfo(ctx); err != nil {
		t.Fatalf("physinfo: %v", err)
	}
	doms, err := x.ListDomains(ctx)
	if err != nil || len(doms) == 0 {
		t.Fatalf("ListDomains: %v, %v", doms, err)
	}
	d, err := x.CreateDomain(ctx, DomainConfig{MaxVCPUs: 1})
	if err != nil {
		t.Fatalf("CreateDomain: %v", err)
	}
	if err := x.SetMaxMem(ctx, d, 4096); err != nil {
		t.Errorf("SetMaxMem: %v", err)
	}
	if err := x.PopulatePhysmap(ctx, d, 16); err != nil {
		t.Errorf("PopulatePhysmap: %v", err)
	}
	if di, err := x.DomainInfo(ctx, d); err != nil || di.TotPages != 16 {
		t.Errorf("DomainInfo: %+v, %v", di, err)
	}
	if err := x.DestroyDomain(ctx, d); err != nil {
		t.Fatalf("DestroyDomain: %v", err)
	}
}
