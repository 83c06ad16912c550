package conformance

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// homeFor creates /local/domain/<domid> the way a toolstack does: owned by
// dom0, readable by the guest, with a guest-owned "data" directory.
func homeFor(t *testing.T, c *xenstore.Client, domid uint32) string {
	t.Helper()
	home := fmt.Sprintf("/local/domain/%d", domid)
	must(t, c.Mkdir(ctx(t), home))
	must(t, c.SetPerms(ctx(t), home, []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}, {Domid: domid, Access: xenstore.AccessRead}}))
	must(t, c.Mkdir(ctx(t), home+"/data"))
	must(t, c.SetPerms(ctx(t), home+"/data", []xenstore.Perm{{Domid: domid, Access: xenstore.AccessNone}}))
	t.Cleanup(func() { c.Remove(ctx(t), home) })
	return home
}

func TestGuestPermissions(t *testing.T) {
	e, c := setup(t)
	g := e.guest(t, 21)
	home := homeFor(t, c, 21)
	write(t, c, e.base+"/secret", "s") // owner dom0, no access for others

	// Relative paths are under the guest's home.
	must(t, g.Write(ctx(t), "data/x", []byte("1")))
	if got := read(t, c, home+"/data/x"); got != "1" {
		t.Fatalf("relative write landed elsewhere: %q", got)
	}
	perms, err := c.GetPerms(ctx(t), home+"/data/x")
	must(t, err)
	if perms[0].Domid != 21 {
		t.Fatalf("guest-created node owned by %d, want 21", perms[0].Domid)
	}
	if _, err := g.Read(ctx(t), home); err != nil {
		t.Fatalf("guest cannot read its readable home: %v", err)
	}
	wantErr(t, "guest writes its read-only home", g.Write(ctx(t), home, []byte("x")), syscall.EACCES)
	wantErr(t, "guest creates a node in its read-only home", g.Write(ctx(t), home+"/new", []byte("x")), syscall.EACCES)
	_, err = g.Read(ctx(t), e.base+"/secret")
	wantErr(t, "guest reads a dom0-only node", err, syscall.EACCES)
	_, err = g.Read(ctx(t), e.base+"/secret/missing")
	wantErr(t, "guest reads a missing node below an unreadable one", err, syscall.EACCES)
	_, err = g.Read(ctx(t), "data/missing")
	wantErr(t, "guest reads a missing node in its own directory", err, syscall.ENOENT)

	// Per-domain entries.
	must(t, c.SetPerms(ctx(t), e.base+"/secret", []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}, {Domid: 21, Access: xenstore.AccessRead}}))
	if v, err := g.Read(ctx(t), e.base+"/secret"); err != nil || string(v) != "s" {
		t.Fatalf("guest read with an r21 entry: %q %v", v, err)
	}
	wantErr(t, "guest writes with only r21", g.Write(ctx(t), e.base+"/secret", nil), syscall.EACCES)

	// Owners may change permissions but not give the node away.
	must(t, g.SetPerms(ctx(t), "data/x", []xenstore.Perm{{Domid: 21, Access: xenstore.AccessRead}}))
	wantErr(t, "guest changes the owner", g.SetPerms(ctx(t), "data/x", []xenstore.Perm{{Domid: 0, Access: xenstore.AccessRead}}), syscall.EPERM)
	wantErr(t, "guest sets perms on a node it does not own", g.SetPerms(ctx(t), home, []xenstore.Perm{{Domid: 21, Access: xenstore.AccessBoth}}), syscall.EACCES)

	// Privileged-only requests.
	wantErr(t, "guest INTRODUCE", g.Introduce(ctx(t), 30, 1, 1), syscall.EACCES)
	wantErr(t, "guest RELEASE", g.Release(ctx(t), 21), syscall.EACCES)
	_, err = g.Control(ctx(t), "print", "x")
	wantErr(t, "guest CONTROL", err, syscall.EACCES)

	// Relative watches report relative paths; unreadable changes are not reported.
	w, err := g.Watch(ctx(t), "data", "rel")
	must(t, err)
	expectEvent(t, w, "data")
	write(t, c, home+"/data/y", "2")
	expectEvent(t, w, "data/y")
	a, err := g.Watch(ctx(t), e.base, "abs")
	must(t, err)
	expectEvent(t, a, e.base)
	write(t, c, e.base+"/hidden", "h") // inherits n0 from the base: unreadable for 21
	must(t, c.Mkdir(ctx(t), e.base+"/visible"))
	must(t, c.SetPerms(ctx(t), e.base+"/visible", []xenstore.Perm{{Domid: 0, Access: xenstore.AccessRead}}))
	write(t, c, e.base+"/visible", "now readable")
	if seen := expectEventsThen(t, a, e.base+"/visible"); contains(seen, e.base+"/hidden") {
		t.Fatalf("guest saw an event for a node it cannot read: %v", seen)
	}
}

func TestGuestQuotas(t *testing.T) {
	e, c := setup(t)
	g := e.guest(t, 22)
	homeFor(t, c, 22)

	// Node size (2048 with the C record overhead).
	wantErr(t, "guest writes a 3000-byte value", g.Write(ctx(t), "data/big", make([]byte, 3000)), syscall.ENOSPC)
	must(t, g.Write(ctx(t), "data/ok", make([]byte, 1500)))
	must(t, c.Write(ctx(t), e.base+"/dom0big", make([]byte, 3000))) // dom0 is not limited

	// Permissions per node (5).
	six := []xenstore.Perm{{Domid: 22, Access: xenstore.AccessNone}}
	for i := uint32(1); i <= 5; i++ {
		six = append(six, xenstore.Perm{Domid: 100 + i, Access: xenstore.AccessRead})
	}
	wantErr(t, "guest sets 6 permission entries", g.SetPerms(ctx(t), "data/ok", six), syscall.ENOSPC)
	must(t, g.SetPerms(ctx(t), "data/ok", six[:5]))

	// Watches (128, then E2BIG).
	for i := 0; i < 128; i++ {
		if _, err := g.Watch(ctx(t), fmt.Sprintf("data/w%d", i), "q"); err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
	}
	_, err := g.Watch(ctx(t), "data/w-over", "q")
	wantErr(t, "129th watch", err, syscall.E2BIG)
	must(t, g.ResetWatches(ctx(t)))
	w, err := g.Watch(ctx(t), "data/after-reset", "q")
	must(t, err)
	w.Close()

	// Transactions (10 open, then ENOSPC).
	var txs []*xenstore.Tx
	for i := 0; i < 10; i++ {
		tx, err := g.Begin(ctx(t))
		must(t, err)
		txs = append(txs, tx)
	}
	_, err = g.Begin(ctx(t))
	wantErr(t, "11th transaction", err, syscall.ENOSPC)
	for _, tx := range txs {
		must(t, tx.Abort(ctx(t)))
	}

	// Nodes (1000 owned by the domain; it owns data/ok and data/x... so far).
	var last error
	created := 0
	for i := 0; i < 1100; i++ {
		if last = g.Write(ctx(t), fmt.Sprintf("data/n%d", i), nil); last != nil {
			break
		}
		created++
	}
	wantErr(t, "node quota", last, syscall.ENOSPC)
	if created < 990 || created > 1000 {
		t.Fatalf("node quota hit after %d nodes, want close to 1000", created)
	}
	// Paths: more than 2048 bytes below the home.
	long := "data/" + strings.Repeat("p", 2050)
	_, err = g.Raw(ctx(t), xenstore.TypeRead, 0, xenstore.JoinStrings(long))
	wantErr(t, "guest path longer than 2048 below its home", err, syscall.EINVAL)
}

func TestGuestReleaseRemovesOwnedNodes(t *testing.T) {
	e, c := setup(t)
	g := e.guest(t, 23)
	home := homeFor(t, c, 23)
	must(t, c.Introduce(ctx(t), 23, 99, 3))
	must(t, g.Write(ctx(t), "data/owned", []byte("1")))
	write(t, c, e.base+"/shared", "x")
	must(t, c.SetPerms(ctx(t), e.base+"/shared", []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}, {Domid: 23, Access: xenstore.AccessRead}}))
	must(t, c.Release(ctx(t), 23))
	// The guest's connection is closed, its nodes are gone, entries naming it dropped.
	if _, err := g.Read(ctx(t), "data/owned"); err == nil {
		t.Fatalf("released domain's connection still answers")
	}
	if _, err := c.Read(ctx(t), home+"/data"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("node owned by the released domain survived: %v", err)
	}
	if _, err := c.Read(ctx(t), home); err != nil {
		t.Fatalf("dom0-owned home removed: %v", err)
	}
	perms, err := c.GetPerms(ctx(t), e.base+"/shared")
	must(t, err)
	if len(perms) != 1 {
		t.Fatalf("permission entry for a released domain kept: %v", perms)
	}
}

// TestOversizedRequest: C xenstored (and the embedded server) close the
// connection; oxenstored answers E2BIG.
func TestOversizedRequest(t *testing.T) {
	e, _ := setup(t)
	nc, err := net.Dial("unix", e.socket)
	must(t, err)
	defer nc.Close()
	payload := make([]byte, 4105)
	copy(payload, "/x\x00")
	msg := xenstore.AppendMsg(nil, xenstore.TypeWrite, 1, 0, payload)
	nc.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := nc.Write(msg); err != nil && e.daemon != OXenstored {
		return // closed while we were writing: that is the C behaviour
	}
	var hdr [16]byte
	_, err = io.ReadFull(nc, hdr[:])
	if e.daemon == OXenstored {
		must(t, err)
		typ := xenstore.MsgType(binary.LittleEndian.Uint32(hdr[:]))
		if typ != xenstore.TypeError {
			t.Fatalf("oxenstored answered an oversized request with %s", typ)
		}
		return
	}
	if err == nil {
		t.Fatalf("daemon answered an oversized request (type %d) instead of closing", binary.LittleEndian.Uint32(hdr[:]))
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection neither closed nor answered")
	}
}

// TestSetTarget: a device-model domain targeting a guest gets the guest's
// access rights.
func TestSetTarget(t *testing.T) {
	e, c := setup(t)
	dm := e.guest(t, 31)
	write(t, c, e.base+"/guest-owned", "g")
	must(t, c.SetPerms(ctx(t), e.base+"/guest-owned", []xenstore.Perm{{Domid: 30, Access: xenstore.AccessNone}}))
	_, err := dm.Read(ctx(t), e.base+"/guest-owned")
	wantErr(t, "read before SET_TARGET", err, syscall.EACCES)
	wantErr(t, "SET_TARGET for a domain not introduced", c.SetTarget(ctx(t), 31, 30), syscall.ENOENT)
	must(t, c.Introduce(ctx(t), 31, 1, 1))
	must(t, c.SetTarget(ctx(t), 31, 30))
	if v, err := dm.Read(ctx(t), e.base+"/guest-owned"); err != nil || string(v) != "g" {
		t.Fatalf("read after SET_TARGET: %q %v", v, err)
	}
	must(t, dm.Write(ctx(t), e.base+"/guest-owned", []byte("dm")))
	wantErr(t, "guest SET_TARGET", dm.SetTarget(ctx(t), 31, 30), syscall.EACCES)
	out, err := c.Control(ctx(t), "help")
	must(t, err)
	if len(out) == 0 {
		t.Fatalf("CONTROL help returned nothing")
	}
	_, err = c.Control(ctx(t), "no-such-command")
	wantErr(t, "unknown CONTROL command", err, syscall.EINVAL)
}
