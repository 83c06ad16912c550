package xenstore

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestMsgRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	buf.Write(AppendMsg(nil, TypeWrite, 7, 3, []byte("/a\x00v")))
	buf.Write(AppendMsg(nil, TypeWatchEvent, 0, 0, nil))
	m, err := ReadMsg(&buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != TypeWrite || m.ReqID != 7 || m.TxID != 3 || m.Len != 4 || string(m.Payload) != "/a\x00v" {
		t.Fatalf("decoded %+v", m)
	}
	m, err = ReadMsg(&buf, make([]byte, HeaderSize))
	if err != nil || m.Type != TypeWatchEvent || m.Payload != nil {
		t.Fatalf("empty payload: %+v %v", m, err)
	}
	if _, err := ReadMsg(&buf, nil); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}
	// Little-endian header layout.
	b := AppendMsg(nil, TypeRead, 0x01020304, 0, []byte("x"))
	if !bytes.Equal(b[:16], []byte{2, 0, 0, 0, 4, 3, 2, 1, 0, 0, 0, 0, 1, 0, 0, 0}) {
		t.Fatalf("header bytes % x", b[:16])
	}
}

func TestReadMsgLimits(t *testing.T) {
	b := AppendMsg(nil, TypeWrite, 1, 0, make([]byte, PayloadMax+1))
	if _, err := ReadMsg(bytes.NewReader(b), nil); !errors.Is(err, ErrPayloadTooLarge) {
		t.Fatalf("oversized payload: %v", err)
	}
	b = AppendMsg(nil, TypeWrite, 1, 0, make([]byte, PayloadMax))
	if _, err := ReadMsg(bytes.NewReader(b), nil); err != nil {
		t.Fatalf("payload at the limit: %v", err)
	}
	if _, err := ReadMsg(bytes.NewReader(b[:30]), nil); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated payload: %v", err)
	}
}

func TestStrings(t *testing.T) {
	if got := SplitStrings([]byte("a\x00bc\x00")); !slices.Equal(got, []string{"a", "bc"}) {
		t.Fatalf("split = %q", got)
	}
	if got := SplitStrings([]byte("a\x00b")); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("split unterminated = %q", got)
	}
	if got := SplitStrings(nil); got != nil {
		t.Fatalf("split empty = %q", got)
	}
	if got := JoinStrings("x", "", "y"); string(got) != "x\x00\x00y\x00" {
		t.Fatalf("join = %q", got)
	}
}

func TestParsePerm(t *testing.T) {
	good := map[string]Perm{"n0": {0, AccessNone}, "r5": {5, AccessRead}, "w65535": {65535, AccessWrite}, "b12": {12, AccessBoth}}
	for s, want := range good {
		p, err := ParsePerm(s)
		if err != nil || p != want || p.String() != s {
			t.Errorf("ParsePerm(%q) = %v, %v", s, p, err)
		}
	}
	for _, s := range []string{"", "r", "x1", "r-1", "r65536", "r1a", "R1", "r 1"} {
		if _, err := ParsePerm(s); err == nil {
			t.Errorf("ParsePerm(%q) accepted", s)
		}
	}
	if err := validPerms([]Perm{{Domid: 70000, Access: AccessRead}}); err == nil || !strings.Contains(err.Error(), "perms[0].Domid") {
		t.Errorf("validPerms of a big domid: %v", err)
	}
}

func TestErrors(t *testing.T) {
	e := DecodeError(TypeRead, "/x", []byte("ENOENT\x00"))
	if !errors.Is(e, syscall.ENOENT) || errors.Is(e, syscall.EACCES) || errors.Is(e, ErrQuota) {
		t.Fatalf("ENOENT matching wrong: %v", e)
	}
	var errno syscall.Errno
	if !errors.As(e, &errno) || errno != syscall.ENOENT {
		t.Fatalf("errors.As errno = %v", errno)
	}
	if e.Error() != `xenstore READ "/x": ENOENT` {
		t.Fatalf("message %q", e.Error())
	}
	q := DecodeError(TypeWrite, "/x", []byte("EQUOTA\x00"))
	if !errors.Is(q, ErrQuota) {
		t.Fatalf("EQUOTA does not match ErrQuota")
	}
	u := DecodeError(TypeWrite, "", []byte("EWEIRD\x00"))
	if u.Errno != 0 || u.Name != "EWEIRD" || errors.Is(u, syscall.EIO) {
		t.Fatalf("unknown name: %+v", u)
	}
	for _, n := range []string{"EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
		"ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM"} {
		e, ok := ErrnoFromName(n)
		if !ok || ErrnoName(e) != n {
			t.Errorf("errno name %s does not round-trip (%v %v)", n, e, ok)
		}
	}
}

func TestWatchEventDecode(t *testing.T) {
	p, tok, err := DecodeWatchEvent([]byte("/a/b\x00tok\x00"))
	if err != nil || p != "/a/b" || tok != "tok" {
		t.Fatalf("%q %q %v", p, tok, err)
	}
	if _, _, err := DecodeWatchEvent([]byte("noterminator")); err == nil {
		t.Fatalf("accepted an event without NUL")
	}
}

func TestCheckPath(t *testing.T) {
	if err := checkPath(TypeRead, "/"+strings.Repeat("a", AbsPathMax-1)); err != nil {
		t.Fatalf("3072-byte absolute path refused: %v", err)
	}
	for _, p := range []string{"", "/a\x00b", "/" + strings.Repeat("a", AbsPathMax), strings.Repeat("a", RelPathMax+1)} {
		err := checkPath(TypeRead, p)
		if !errors.Is(err, syscall.EINVAL) {
			t.Errorf("checkPath(%.20q...) = %v", p, err)
		}
	}
}

func TestParseDirectoryPart(t *testing.T) {
	g, names, end, err := ParseDirectoryPart([]byte("1f\x00a\x00bb\x00\x00"))
	if err != nil || g != "1f" || !slices.Equal(names, []string{"a", "bb"}) || !end {
		t.Fatalf("%q %q %v %v", g, names, end, err)
	}
	_, names, end, err = ParseDirectoryPart([]byte("2\x00a\x00"))
	if err != nil || end || len(names) != 1 {
		t.Fatalf("middle part: %q %v %v", names, end, err)
	}
	for _, bad := range []string{"", "\x00a\x00", "1\x00abc"} {
		if _, _, _, err := ParseDirectoryPart([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}
