package conformance

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore/xenstored"
)

func TestReadWrite(t *testing.T) {
	e, c := setup(t)
	p := e.base + "/a/b/c"
	write(t, c, p, "hello")
	if got := read(t, c, p); got != "hello" {
		t.Fatalf("read %s = %q, want hello", p, got)
	}
	// WRITE creates missing parents with empty values.
	if got := read(t, c, e.base+"/a/b"); got != "" {
		t.Fatalf("implicit parent value = %q, want empty", got)
	}
	write(t, c, p, "again")
	if got := read(t, c, p); got != "again" {
		t.Fatalf("overwrite: read %q", got)
	}
	write(t, c, p, "")
	if got := read(t, c, p); got != "" {
		t.Fatalf("empty value: read %q", got)
	}
	bin := []byte{0, 1, 2, 0, 255}
	must(t, c.Write(ctx(t), p, bin))
	if got, err := c.Read(ctx(t), p); err != nil || !bytes.Equal(got, bin) {
		t.Fatalf("binary value: read %v, %v", got, err)
	}
	_, err := c.Read(ctx(t), e.base+"/missing")
	wantErr(t, "read missing node", err, syscall.ENOENT)
	_, err = c.Read(ctx(t), e.base+"/missing/deeper")
	wantErr(t, "read below a missing node", err, syscall.ENOENT)
	// A value at the limit the payload allows (path + NUL + value <= 4096).
	big := strings.Repeat("x", 2000)
	write(t, c, e.base+"/big", big)
	if got := read(t, c, e.base+"/big"); got != big {
		t.Fatalf("2000-byte value came back with %d bytes", len(got))
	}
}

func TestMkdir(t *testing.T) {
	e, c := setup(t)
	p := e.base + "/m/n"
	must(t, c.Mkdir(ctx(t), p))
	if got := read(t, c, p); got != "" {
		t.Fatalf("mkdir value = %q", got)
	}
	write(t, c, p, "keep")
	must(t, c.Mkdir(ctx(t), p)) // existing: fine, value unchanged
	if got := read(t, c, p); got != "keep" {
		t.Fatalf("mkdir of an existing node changed its value to %q", got)
	}
}

func TestRemove(t *testing.T) {
	e, c := setup(t)
	write(t, c, e.base+"/r/x/y", "1")
	write(t, c, e.base+"/r/z", "2")
	must(t, c.Remove(ctx(t), e.base+"/r"))
	_, err := c.Read(ctx(t), e.base+"/r/x/y")
	wantErr(t, "read removed descendant", err, syscall.ENOENT)
	_, err = c.Read(ctx(t), e.base+"/r")
	wantErr(t, "read removed node", err, syscall.ENOENT)
	names, err := c.List(ctx(t), e.base)
	must(t, err)
	if contains(names, "r") {
		t.Fatalf("removed child still listed in parent: %v", names)
	}
	// Missing node whose parent exists: fine. Missing parent: ENOENT.
	must(t, c.Remove(ctx(t), e.base+"/never"))
	wantErr(t, "rm below a missing parent", c.Remove(ctx(t), e.base+"/never/child"), syscall.ENOENT)
	if e.daemon != OXenstored { // do not try to wipe a real oxenstored's tree
		wantErr(t, "rm /", c.Remove(ctx(t), "/"), syscall.EINVAL)
	}
}

func TestInvalidPaths(t *testing.T) {
	e, c := setup(t)
	for _, p := range []string{"/a//b", "/a/", "/a b", "/a\x01", "/a*b", "/tab\tx", "//"} {
		// Send raw so the server, not the client, judges the path.
		_, err := c.Raw(ctx(t), xenstore.TypeRead, 0, xenstore.JoinStrings(p))
		wantErr(t, fmt.Sprintf("read %q", p), err, syscall.EINVAL)
		_, err = c.Raw(ctx(t), xenstore.TypeWrite, 0, append(append([]byte(p), 0), 'v'))
		wantErr(t, fmt.Sprintf("write %q", p), err, syscall.EINVAL)
	}
	// The client refuses a path over XENSTORE_ABS_PATH_MAX before sending.
	long := "/" + strings.Repeat("a", xenstore.AbsPathMax) // 3073 bytes
	wantErr(t, "client-side long path", c.Write(ctx(t), long, nil), syscall.EINVAL)
	wantErr(t, "client-side empty path", c.Write(ctx(t), "", nil), syscall.EINVAL)
	// Special paths are not nodes. C xenstored: EINVAL. oxenstored 4.17
	// answers the read with an empty value (observed in nested Xen).
	v, err := c.Read(ctx(t), "@introduceDomain")
	if e.daemon == OXenstored {
		if err != nil || len(v) != 0 {
			t.Fatalf("oxenstored read @introduceDomain = %q, %v; want an empty value as observed", v, err)
		}
	} else {
		wantErr(t, "read @introduceDomain", err, syscall.EINVAL)
	}
	// A payload over 4096 bytes is refused by the client (it would kill the connection).
	wantErr(t, "client-side oversized value", c.Write(ctx(t), "/x", make([]byte, 4096)), syscall.E2BIG)
}

// TestPathLength pins the daemons' path limit at its boundary: at most 2048
// bytes below a leading /local/domain/<id>/ and 2048 for the whole path
// elsewhere, for dom0 as for guests (C is_valid_nodename, oxenstored
// path_validate); one byte more is EINVAL, for reads, writes and watches.
// oxenstored's limit is 1024 as shipped: its oxenstored.conf sets
// quota-path-max = 1024 (the built-in default is 2048).
func TestPathLength(t *testing.T) {
	e, c := setup(t)
	relMax := xenstore.RelPathMax
	if e.daemon == OXenstored {
		relMax = 1024
	}
	// pad extends prefix by one component to exactly n bytes.
	pad := func(prefix string, n int) string { return prefix + "/" + strings.Repeat("p", n-len(prefix)-1) }
	leaf := "/conformance-" + e.base[strings.LastIndexByte(e.base, '-')+1:]
	for _, tc := range []struct{ name, prefix, top string }{
		{"outside /local/domain", e.base, e.base},
		{"below /local/domain/0/", "/local/domain/0" + leaf, "/local/domain/0" + leaf},
		{"below /local/domain/-1/ (sscanf %u takes a sign)", "/local/domain/-1" + leaf, "/local/domain/-1"},
	} {
		off := 0
		if strings.HasPrefix(tc.prefix, "/local/domain/") {
			off = len(tc.prefix) - len(leaf) + 1 // the prefix ends in "/local/domain/<id>"
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			c.Remove(ctx, tc.top)
		})
		at, over := pad(tc.prefix, off+relMax), pad(tc.prefix, off+relMax+1)
		_, err := c.Raw(ctx(t), xenstore.TypeRead, 0, xenstore.JoinStrings(at))
		wantErr(t, tc.name+": read of a missing path at the limit", err, syscall.ENOENT)
		_, err = c.Raw(ctx(t), xenstore.TypeRead, 0, xenstore.JoinStrings(over))
		wantErr(t, tc.name+": read of a path one byte over the limit", err, syscall.EINVAL)
		_, err = c.Raw(ctx(t), xenstore.TypeWrite, 0, append([]byte(at), 0))
		must(t, err)
		_, err = c.Raw(ctx(t), xenstore.TypeWrite, 0, append([]byte(over), 0))
		wantErr(t, tc.name+": write one byte over the limit", err, syscall.EINVAL)
		watchOver(t, e, c, tc.name+": watch one byte over the limit", over)
	}
	// Special paths: the same limit for the whole path.
	watchOver(t, e, c, "watch on a special path over the limit", "@"+strings.Repeat("s", relMax))
}

// watchOver watches a path over the length limit: C refuses it with EINVAL;
// oxenstored's WATCH does not check the length and accepts it (observed).
func watchOver(t *testing.T, e *env, c *xenstore.Client, what, path string) {
	t.Helper()
	_, err := c.Raw(ctx(t), xenstore.TypeWatch, 0, xenstore.JoinStrings(path, "t"))
	if e.daemon != OXenstored {
		wantErr(t, what, err, syscall.EINVAL)
		return
	}
	must(t, err)
	_, err = c.Raw(ctx(t), xenstore.TypeUnwatch, 0, xenstore.JoinStrings(path, "t"))
	must(t, err)
}

func TestDirectory(t *testing.T) {
	e, c := setup(t)
	want := []string{"one", "two", "three"}
	for _, n := range want {
		write(t, c, e.base+"/d/"+n, n)
	}
	write(t, c, e.base+"/d/two/deep", "x")
	got, err := c.List(ctx(t), e.base+"/d")
	must(t, err)
	if e.daemon != OXenstored { // C keeps creation order; oxenstored does not promise one
		if !slices.Equal(got, want) {
			t.Fatalf("list = %v, want %v in creation order", got, want)
		}
	}
	slices.Sort(got)
	w := slices.Clone(want)
	slices.Sort(w)
	if !slices.Equal(got, w) {
		t.Fatalf("list = %v, want %v", got, w)
	}
	got, err = c.List(ctx(t), e.base+"/d/one")
	must(t, err)
	if len(got) != 0 {
		t.Fatalf("leaf lists %v", got)
	}
	_, err = c.List(ctx(t), e.base+"/nothing")
	wantErr(t, "list missing node", err, syscall.ENOENT)
}

func TestDirectoryPart(t *testing.T) {
	e, c := setup(t)
	dir := e.base + "/many"
	const n = 300
	var want []string
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("child-with-a-long-name-%04d", i) // 27 bytes: ~8400 bytes of names
		want = append(want, name)
	}
	must(t, c.Transaction(bulkCtx(t), func(tx *xenstore.Tx) error {
		for _, name := range want {
			if err := tx.Write(ctx(t), dir+"/"+name, []byte("v")); err != nil {
				return err
			}
		}
		return nil
	}))
	p, err := c.Raw(ctx(t), xenstore.TypeDirectory, 0, xenstore.JoinStrings(dir))
	if e.daemon == OXenstored {
		// Observed on oxenstored 4.17 (nested Xen): no E2BIG, it sends the
		// whole list in one reply longer than XENSTORE_PAYLOAD_MAX (the
		// client accepts replies up to MaxReplyPayload for this reason).
		must(t, err)
		t.Logf("RECORD DIRECTORY of a list over 4096 bytes: OK, %d-byte reply", len(p))
		got := xenstore.SplitStrings(p)
		slices.Sort(got)
		if len(p) <= xenstore.PayloadMax || !slices.Equal(got, want) {
			t.Fatalf("oversized DIRECTORY reply: %d bytes, %d names, want all %d", len(p), len(got), n)
		}
	} else {
		// C xenstored refuses a reply over 4096 bytes with E2BIG.
		wantErr(t, "DIRECTORY of a list over 4096 bytes", err, syscall.E2BIG)
	}
	got, err := c.List(ctx(t), dir) // falls back to DIRECTORY_PART
	must(t, err)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("DIRECTORY_PART walk returned %d names, want %d", len(got), len(want))
	}
	// First part: generation count, then names, no end marker yet.
	p, err = c.Raw(ctx(t), xenstore.TypeDirectoryPart, 0, xenstore.JoinStrings(dir, "0"))
	if e.daemon == OXenstored {
		// oxenstored 4.17 does not implement DIRECTORY_PART (observed in
		// nested Xen: ENOSYS); it needs none, sending oversized DIRECTORY
		// replies instead.
		wantErr(t, "DIRECTORY_PART on oxenstored", err, syscall.ENOSYS)
		return
	}
	must(t, err)
	if len(p) > xenstore.PayloadMax || bytes.IndexByte(p, 0) < 1 {
		t.Fatalf("first part malformed (%d bytes)", len(p))
	}
	if bytes.HasSuffix(p, []byte{0, 0}) {
		t.Fatalf("first part of an 8 KiB list already ends the list")
	}
	// Offset at the end: just the generation and the empty name.
	total := 0
	for _, s := range want {
		total += len(s) + 1
	}
	p, err = c.Raw(ctx(t), xenstore.TypeDirectoryPart, 0, xenstore.JoinStrings(dir, fmt.Sprint(total)))
	must(t, err)
	if !bytes.HasSuffix(p, []byte{0, 0}) || bytes.Count(p, []byte{0}) != 2 {
		t.Fatalf("part at the end = %q, want gen|empty|", p)
	}
	atEnd := p
	// Past the end: C xenstored 4.17 answers like at the end (gen and an
	// empty name), it does not fail (observed on C xenstored in nested Xen;
	// send_directory_part: "Offset behind list: just return a list with an
	// empty string").
	p, err = c.Raw(ctx(t), xenstore.TypeDirectoryPart, 0, xenstore.JoinStrings(dir, fmt.Sprint(total+1)))
	must(t, err)
	if !bytes.Equal(p, atEnd) {
		t.Fatalf("part past the end = %q, want %q as at the end", p, atEnd)
	}
	// The generation is a decimal number.
	if _, err := strconv.ParseUint(string(p[:bytes.IndexByte(p, 0)]), 10, 64); err != nil {
		t.Fatalf("generation %q is not decimal: %v", p, err)
	}
}

func TestPerms(t *testing.T) {
	e, c := setup(t)
	p := e.base + "/perm"
	write(t, c, p, "v")
	perms, err := c.GetPerms(ctx(t), p)
	must(t, err)
	if len(perms) == 0 || perms[0].Domid != 0 {
		t.Fatalf("dom0-created node perms = %v, want owner 0", perms)
	}
	set := []xenstore.Perm{{Domid: 0, Access: xenstore.AccessRead}, {Domid: 3, Access: xenstore.AccessBoth}, {Domid: 4, Access: xenstore.AccessWrite}}
	if e.daemon == Embedded {
		must(t, c.SetPerms(ctx(t), p, set))
		got, err := c.GetPerms(ctx(t), p)
		must(t, err)
		if !slices.Equal(got, set) {
			t.Fatalf("perms round trip: got %v, want %v", got, set)
		}
	} else {
		// Real daemons ignore entries for domains that do not exist; only
		// the owner entry is certain to come back.
		must(t, c.SetPerms(ctx(t), p, set[:1]))
		got, err := c.GetPerms(ctx(t), p)
		must(t, err)
		if len(got) < 1 || got[0] != set[0] {
			t.Fatalf("perms round trip: got %v, want %v first", got, set[0])
		}
	}
	// Children inherit the parent's permissions.
	write(t, c, p+"/child", "x")
	got, err := c.GetPerms(ctx(t), p+"/child")
	must(t, err)
	if got[0] != set[0] {
		t.Fatalf("child perms %v do not inherit %v", got, set[0])
	}
	bad := []string{"x0", "rabc"}
	if e.daemon == Embedded {
		bad = append(bad, "r", "", "b-1", "r70000")
	}
	for _, bad := range bad {
		_, err := c.Raw(ctx(t), xenstore.TypeSetPerms, 0, xenstore.JoinStrings(p, bad))
		wantErr(t, fmt.Sprintf("set perms %q", bad), err, syscall.EINVAL)
	}
	_, err = c.Raw(ctx(t), xenstore.TypeSetPerms, 0, xenstore.JoinStrings(p))
	wantErr(t, "set perms without a permission", err, syscall.EINVAL)
	wantErr(t, "set perms on a missing node", c.SetPerms(ctx(t), e.base+"/none", set[:1]), syscall.ENOENT)
	_, err = c.GetPerms(ctx(t), e.base+"/none")
	wantErr(t, "get perms of a missing node", err, syscall.ENOENT)
}

func TestErrorsAndUnknownTypes(t *testing.T) {
	e, c := setup(t)
	_, err := c.Raw(ctx(t), xenstore.MsgType(99), 0, xenstore.JoinStrings(""))
	wantErr(t, "unknown message type", err, syscall.ENOSYS)
	_, err = c.Raw(ctx(t), xenstore.MsgType(23), 0, xenstore.JoinStrings(e.base))
	wantErr(t, "type 23 (4.21+ only)", err, syscall.ENOSYS)
	// The connection still works.
	write(t, c, e.base+"/alive", "1")
	path, err := c.GetDomainPath(ctx(t), 7)
	must(t, err)
	if path != "/local/domain/7" {
		t.Fatalf("GET_DOMAIN_PATH 7 = %q", path)
	}
	in, err := c.IsDomainIntroduced(ctx(t), 0)
	must(t, err)
	if !in {
		t.Fatalf("dom0 not introduced")
	}
}

// TestReplyPayloads pins the exact reply bytes the C daemon sends.
func TestReplyPayloads(t *testing.T) {
	e, c := setup(t)
	raw := func(typ xenstore.MsgType, tx uint32, payload []byte) string {
		t.Helper()
		p, err := c.Raw(ctx(t), typ, tx, payload)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		return string(p)
	}
	if p := raw(xenstore.TypeWrite, 0, append([]byte(e.base+"/r\x00"), "val"...)); p != "OK\x00" {
		t.Fatalf("WRITE reply %q", p)
	}
	if p := raw(xenstore.TypeRead, 0, xenstore.JoinStrings(e.base+"/r")); p != "val" {
		t.Fatalf("READ reply %q (no NUL expected)", p)
	}
	if p := raw(xenstore.TypeMkdir, 0, xenstore.JoinStrings(e.base+"/m")); p != "OK\x00" {
		t.Fatalf("MKDIR reply %q", p)
	}
	if p := raw(xenstore.TypeDirectory, 0, xenstore.JoinStrings(e.base)); p != "r\x00m\x00" && p != "m\x00r\x00" {
		t.Fatalf("DIRECTORY reply %q", p)
	}
	if p := raw(xenstore.TypeDirectory, 0, xenstore.JoinStrings(e.base+"/m")); p != "" {
		t.Fatalf("DIRECTORY of a leaf %q", p)
	}
	if p := raw(xenstore.TypeGetPerms, 0, xenstore.JoinStrings(e.base+"/m")); !strings.HasSuffix(p, "\x00") || p[0] != 'n' {
		t.Fatalf("GET_PERMS reply %q", p)
	}
	p := raw(xenstore.TypeTransactionStart, 0, []byte{0})
	id, err := strconv.ParseUint(strings.TrimSuffix(p, "\x00"), 10, 32)
	if err != nil || !strings.HasSuffix(p, "\x00") || id == 0 {
		t.Fatalf("TRANSACTION_START reply %q", p)
	}
	if p := raw(xenstore.TypeTransactionEnd, uint32(id), xenstore.JoinStrings("F")); p != "OK\x00" {
		t.Fatalf("TRANSACTION_END reply %q", p)
	}
	if p := raw(xenstore.TypeRm, 0, xenstore.JoinStrings(e.base+"/m")); p != "OK\x00" {
		t.Fatalf("RM reply %q", p)
	}
	if p := raw(xenstore.TypeIsDomainIntroduced, 0, xenstore.JoinStrings("0")); p != "T\x00" {
		t.Fatalf("IS_DOMAIN_INTRODUCED 0 reply %q", p)
	}
	if p := raw(xenstore.TypeGetDomainPath, 0, xenstore.JoinStrings("3")); p != "/local/domain/3\x00" {
		t.Fatalf("GET_DOMAIN_PATH reply %q", p)
	}
	w := raw(xenstore.TypeWatch, 0, xenstore.JoinStrings(e.base, "rawtok"))
	if w != "OK\x00" {
		t.Fatalf("WATCH reply %q", w)
	}
	if p := raw(xenstore.TypeUnwatch, 0, xenstore.JoinStrings(e.base, "rawtok")); p != "OK\x00" {
		t.Fatalf("UNWATCH reply %q", p)
	}
}

// TestSetPermsOwnerMissing: C xenstored 4.17 answers SET_PERMS whose owner
// (first entry) is a domain that does not exist with ENOENT, also inside a
// transaction (observed in nested Xen, where no guest runs: a domain layout
// with guest-owned nodes failed at its first such SET_PERMS). The embedded
// server follows C when it knows which domains exist (Config.DomainState).
func TestSetPermsOwnerMissing(t *testing.T) {
	e, c := setup(t)
	if e.srv != nil {
		srv := startEmbedded(t, xenstored.Config{DomainState: func(d uint32) (bool, bool) { return d == 0, false }})
		c = dial(t, srv.socketPath)
	}
	const ghost = 32000 // no such domain
	p := e.base + "/owned"
	write(t, c, p, "v")
	err := c.SetPerms(ctx(t), p, []xenstore.Perm{{Domid: ghost, Access: xenstore.AccessNone}})
	tx, terr := c.Begin(ctx(t))
	must(t, terr)
	must(t, tx.Write(ctx(t), p+"/in-tx", nil))
	txErr := tx.SetPerms(ctx(t), p+"/in-tx", []xenstore.Perm{{Domid: ghost, Access: xenstore.AccessNone}})
	tx.Abort(ctx(t))
	if e.daemon == OXenstored {
		record(t, "SET_PERMS owned by a domain that does not exist", err)
		record(t, "SET_PERMS owned by a domain that does not exist, in a transaction", txErr)
	} else {
		wantErr(t, "SET_PERMS owned by a domain that does not exist", err, syscall.ENOENT)
		wantErr(t, "SET_PERMS owned by a domain that does not exist, in a transaction", txErr, syscall.ENOENT)
	}
	// An owner that exists is fine; a non-owner entry for a missing domain
	// does not fail the request.
	must(t, c.SetPerms(ctx(t), p, []xenstore.Perm{{Domid: 0, Access: xenstore.AccessRead}, {Domid: ghost, Access: xenstore.AccessBoth}}))
	if perms, err := c.GetPerms(ctx(t), p); err != nil || perms[0] != (xenstore.Perm{Domid: 0, Access: xenstore.AccessRead}) {
		t.Fatalf("perms after setting an existing owner: %v %v", perms, err)
	}
}
