package sim

import (
	"context"
	"syscall"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// TestCreateRequestedDomid: a requested domid is used as given, EEXIST while
// a domain has it (a dying one too, as is_free_domid finds it), and does
// not move the rover that picks domids for requests without one.
func TestCreateRequestedDomid(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{})
	withDomid := func(d xenctrl.Domid) xenctrl.DomainConfig {
		cfg := pv
		cfg.Domid = d
		return cfg
	}
	d, err := h.CreateDomain(ctx, withDomid(100))
	if err != nil || d != 100 {
		t.Fatalf("create with domid 100: %d, %v", d, err)
	}
	if n := mustCreate(t, h, pv); n != 1 {
		t.Fatalf("next picked domid %d, want 1 (a requested domid leaves the rover alone)", n)
	}
	_, err = h.CreateDomain(ctx, withDomid(100))
	wantErrno(t, err, syscall.EEXIST)
	release, err := h.Hold(100)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.DestroyDomain(ctx, 100); err != nil {
		t.Fatal(err)
	}
	_, err = h.CreateDomain(ctx, withDomid(100))
	wantErrno(t, err, syscall.EEXIST) // dying, not yet released
	release()
	waitGone(t, h, 100)
	if d, err := h.CreateDomain(ctx, withDomid(100)); err != nil || d != 100 {
		t.Fatalf("create with released domid 100: %d, %v", d, err)
	}
	_, err = h.CreateDomain(ctx, withDomid(xenctrl.DomidFirstReserved))
	wantErrno(t, err, syscall.EINVAL)
	// A used domid is refused before the configuration is checked, as
	// do_domctl does before domain_create.
	bad := withDomid(1)
	bad.MaxVCPUs = 0
	_, err = h.CreateDomain(ctx, bad)
	wantErrno(t, err, syscall.EEXIST)
}
