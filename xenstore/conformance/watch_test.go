package conformance

import (
	"strings"
	"syscall"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

func TestWatchFiresOnRegistration(t *testing.T) {
	e, c := setup(t)
	w, err := c.Watch(ctx(t), e.base+"/not-yet", "tok1")
	must(t, err)
	defer w.Close()
	expectEvent(t, w, e.base+"/not-yet") // even for a missing node
}

func TestWatchChanges(t *testing.T) {
	e, c := setup(t)
	dir := e.base + "/wd"
	must(t, c.Mkdir(ctx(t), dir))
	w, err := c.Watch(ctx(t), dir, "tok")
	must(t, err)
	defer w.Close()
	expectEvent(t, w, dir)

	write(t, c, dir, "v")
	expectEvent(t, w, dir)
	write(t, c, dir+"/child/grand", "v")
	expectEvent(t, w, dir+"/child/grand")
	must(t, c.SetPerms(ctx(t), dir+"/child", []xenstore.Perm{{Domid: 0, Access: xenstore.AccessRead}}))
	expectEvent(t, w, dir+"/child")
	must(t, c.Remove(ctx(t), dir+"/child"))
	expectEvent(t, w, dir+"/child")
	// Changes elsewhere do not fire.
	write(t, c, e.base+"/elsewhere", "x")
	write(t, c, dir+"/sentinel2", "")
	if seen := expectEventsThen(t, w, dir+"/sentinel2"); contains(seen, e.base+"/elsewhere") {
		t.Fatalf("watch on %s fired for an unrelated node: %v", dir, seen)
	}
}

func TestWatchRemoveParent(t *testing.T) {
	e, c := setup(t)
	leaf := e.base + "/rp/a/b"
	write(t, c, leaf, "1")
	w, err := c.Watch(ctx(t), leaf, "leaf")
	must(t, err)
	defer w.Close()
	expectEvent(t, w, leaf)
	must(t, c.Remove(ctx(t), e.base+"/rp"))
	// Recursive removal of a parent fires the watch with the watched path.
	expectEvent(t, w, leaf)
}

func TestWatchErrors(t *testing.T) {
	e, c := setup(t)
	w, err := c.Watch(ctx(t), e.base+"/dup", "same")
	must(t, err)
	defer w.Close()
	_, err = c.Raw(ctx(t), xenstore.TypeWatch, 0, xenstore.JoinStrings(e.base+"/dup", "same"))
	wantErr(t, "duplicate watch", err, syscall.EEXIST)
	_, err = c.Raw(ctx(t), xenstore.TypeUnwatch, 0, xenstore.JoinStrings(e.base+"/nowatch", "nope"))
	wantErr(t, "unwatch of an unknown watch", err, syscall.ENOENT)
	_, err = c.Raw(ctx(t), xenstore.TypeWatch, 0, xenstore.JoinStrings(e.base+"/depth", "d", "1"))
	// EINVAL on both 4.17 daemons (observed in nested Xen).
	wantErr(t, "watch with a depth argument (4.17)", err, syscall.EINVAL)
	_, err = c.Raw(ctx(t), xenstore.TypeWatch, 0, xenstore.JoinStrings("/bad//path", "t"))
	wantErr(t, "watch on an invalid path", err, syscall.EINVAL)
}

func TestWatchTransactionFiresOnCommit(t *testing.T) {
	e, c := setup(t)
	dir := e.base + "/wt"
	// Nodes exist before the transactions, so that writing them does not
	// change dir's child list (which would make the commit conflict).
	for _, n := range []string{"aborted", "committed", "outside", "after"} {
		must(t, c.Mkdir(ctx(t), dir+"/"+n))
	}
	w, err := c.Watch(ctx(t), dir, "tx")
	must(t, err)
	defer w.Close()
	expectEvent(t, w, dir)

	tx, err := c.Begin(ctx(t))
	must(t, err)
	must(t, tx.Write(ctx(t), dir+"/aborted", []byte("1")))
	must(t, tx.Abort(ctx(t)))
	tx, err = c.Begin(ctx(t))
	must(t, err)
	must(t, tx.Write(ctx(t), dir+"/committed", []byte("1")))
	write(t, c, dir+"/outside", "")
	seen := expectEventsThen(t, w, dir+"/outside")
	if contains(seen, dir+"/aborted") || contains(seen, dir+"/committed") {
		t.Fatalf("events before commit: %v", seen)
	}
	must(t, tx.Commit(ctx(t)))
	write(t, c, dir+"/after", "")
	if seen := expectEventsThen(t, w, dir+"/after"); !contains(seen, dir+"/committed") {
		t.Fatalf("commit did not fire the watch: %v", seen)
	}
}

func TestWatchSpecialIntroduce(t *testing.T) {
	e, c := setup(t)
	w, err := c.Watch(ctx(t), "@introduceDomain", "intro")
	must(t, err)
	defer w.Close()
	expectEvent(t, w, "@introduceDomain")
	r, err := c.Watch(ctx(t), "@releaseDomain", "rel")
	must(t, err)
	defer r.Close()
	expectEvent(t, r, "@releaseDomain")
	e.embeddedOnly(t, "INTRODUCE needs a real domain with a store ring")
	must(t, c.Introduce(ctx(t), 11, 0x1234, 5))
	expectEvent(t, w, "@introduceDomain")
	in, err := c.IsDomainIntroduced(ctx(t), 11)
	must(t, err)
	if !in {
		t.Fatalf("domain 11 not introduced after INTRODUCE")
	}
	must(t, c.Release(ctx(t), 11))
	expectEvent(t, r, "@releaseDomain")
	in, err = c.IsDomainIntroduced(ctx(t), 11)
	must(t, err)
	if in {
		t.Fatalf("domain 11 still introduced after RELEASE")
	}
	wantErr(t, "release of a domain not introduced", c.Release(ctx(t), 11), syscall.ENOENT)
	wantErr(t, "resume of a domain not introduced", c.Resume(ctx(t), 11), syscall.ENOENT)
	_, err = c.Raw(ctx(t), xenstore.TypeIntroduce, 0, xenstore.JoinStrings("12", "1"))
	wantErr(t, "introduce with missing arguments", err, syscall.EINVAL)
}

func TestWatchManyPipelined(t *testing.T) {
	e, c := setup(t)
	dir := e.base + "/burst"
	w, err := c.Watch(ctx(t), dir, "burst")
	must(t, err)
	defer w.Close()
	// Do not read the events while writing: replies must not wait for them.
	const n = 300
	for i := 0; i < n; i++ {
		write(t, c, dir, "x")
	}
	got := 0
	for i := 0; i < n+1; i++ {
		if ev := nextEvent(t, w); ev.Path == dir {
			got++
		}
	}
	if got != n+1 {
		t.Fatalf("got %d events, want %d", got, n+1)
	}
}

// TestWatchEventOverPayloadMax: an event whose path and token exceed the
// 4096-byte payload limit. C xenstored drops it silently (send_event);
// oxenstored sends it oversized on a socket connection (on a ring it sends
// an E2BIG error packet instead), which the Go client accepts.
func TestWatchEventOverPayloadMax(t *testing.T) {
	e, c := setup(t)
	dir := e.base + "/big"
	must(t, c.Mkdir(ctx(t), dir))
	// The event for dir itself is 4091 bytes; for dir/abcdef, 4098.
	token := strings.Repeat("t", xenstore.PayloadMax-len(dir)-2-5)
	w, err := c.Watch(ctx(t), dir, token)
	must(t, err)
	defer w.Close()
	expectEvent(t, w, dir)
	write(t, c, dir+"/abcdef", "")
	write(t, c, dir, "sentinel")
	seen := expectEventsThen(t, w, dir)
	if e.daemon == OXenstored {
		if !contains(seen, dir+"/abcdef") {
			t.Fatalf("oxenstored: no oversized event before the sentinel: %v", seen)
		}
		return
	}
	if len(seen) != 0 {
		t.Fatalf("events over 4096 bytes sent, want them dropped: %v", seen)
	}
}
