package domain

import (
	"regexp"
	"testing"
)

// TestRequestIDWithDifferentSpec: a request_id reused with another spec is
// an error naming request_id (not the first VM); the same spec is still a
// retry, also after a restart and with generated uuid and MACs.
func TestRequestIDWithDifferentSpec(t *testing.T) {
	e := newEnv(t, envOpts{})
	s := spec("req-a")
	s.NICs = []NIC{{Bridge: "xenbr0"}}
	a, err := e.m.CreateVM(e.ctx, s, "req-1")
	if err != nil {
		t.Fatal(err)
	}
	other := spec("req-b")
	if vm, err := e.m.CreateVM(e.ctx, other, "req-1"); CodeOf(err) != CodeAlreadyExists || errField(err, new(*Error)) != "request_id" {
		t.Fatalf("reused request_id with another spec: got VM %s, %v; want AlreadyExists on request_id", vm.ID, err)
	}
	e.close()
	e.open(0)
	b, err := e.m.CreateVM(e.ctx, s, "req-1")
	if err != nil || b.ID != a.ID || b.Spec.NICs[0].MAC != a.Spec.NICs[0].MAC {
		t.Fatalf("retry after restart: %v %v", b, err)
	}
}

// TestGeneratedMACs: an empty MAC becomes a unique 00:16:3e address at
// create, kept in the spec and across an update that leaves it empty.
func TestGeneratedMACs(t *testing.T) {
	e := newEnv(t, envOpts{})
	macRE := regexp.MustCompile(`^00:16:3e:[0-7][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}$`)
	seen := map[string]bool{}
	var first VM
	for i, name := range []string{"mac-a", "mac-b", "mac-c"} {
		s := spec(name)
		s.NICs = []NIC{{}, {MAC: "00:16:3e:00:00:01"}, {}}
		vm, err := e.m.CreateVM(e.ctx, s, "")
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = vm
		}
		for j, n := range vm.Spec.NICs {
			if j == 1 {
				continue // given, shared on purpose
			}
			if !macRE.MatchString(n.MAC) || seen[n.MAC] {
				t.Fatalf("%s nic %d: MAC %q not a fresh Xen-OUI address (seen %v)", name, j, n.MAC, seen)
			}
			seen[n.MAC] = true
		}
		if got := e.vm(vm.ID); got.Spec.NICs[0].MAC != vm.Spec.NICs[0].MAC {
			t.Fatalf("MAC not recorded: %q vs %q", got.Spec.NICs[0].MAC, vm.Spec.NICs[0].MAC)
		}
	}
	s := first.Spec
	s.NICs = []NIC{{}, {MAC: "00:16:3e:00:00:01"}, {}}
	up, err := e.m.UpdateVM(e.ctx, first.ID, s)
	if err != nil {
		t.Fatal(err)
	}
	for j := range up.Spec.NICs {
		if up.Spec.NICs[j].MAC != first.Spec.NICs[j].MAC {
			t.Errorf("update changed nic %d MAC %q -> %q", j, first.Spec.NICs[j].MAC, up.Spec.NICs[j].MAC)
		}
	}
}

// TestResolveIsUnambiguous: a UUID reference is only an id, a name only a
// name, even when an old record carries a UUID-shaped name.
func TestResolveIsUnambiguous(t *testing.T) {
	e := newEnv(t, envOpts{})
	a := e.create("res-a")
	b := e.create("res-b")
	// A record from before names were checked: b named with a's id.
	e.m.mu.Lock()
	delete(e.m.names, b.Spec.Name)
	e.m.names[a.ID] = b.ID
	e.m.vms[b.ID].rec.VM.Spec.Name = a.ID
	e.m.mu.Unlock()
	if got := e.vm(a.ID); got.ID != a.ID {
		t.Fatalf("%s resolved to %s", a.ID, got.ID)
	}
	if err := e.m.DeleteVM(e.ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.GetVM(e.ctx, a.ID); CodeOf(err) != CodeNotFound {
		t.Fatalf("after deleting %s by id, it still resolves (to the VM named so?): %v", a.ID, err)
	}
	if got := e.vm(b.ID); got.ID != b.ID {
		t.Fatalf("b gone: %v", got)
	}
	s := spec("res-c")
	s.UUID = a.ID // free again as an id, but b's (legacy) name
	if _, err := e.m.CreateVM(e.ctx, s, ""); CodeOf(err) != CodeAlreadyExists || errField(err, new(*Error)) != "spec.uuid" {
		t.Fatalf("uuid equal to another VM's name: %v", err)
	}
}
