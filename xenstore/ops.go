package xenstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"syscall"
)

// ops implements the node operations for a transaction id (0: none). Client
// and Tx both expose them.
type ops struct {
	c  *Client
	tx uint32
}

func (o ops) pathReq(ctx context.Context, t MsgType, path string) ([]byte, error) {
	if err := checkPath(t, path); err != nil {
		return nil, err
	}
	return o.c.request(ctx, t, o.tx, path, JoinStrings(path))
}

func (o ops) read(ctx context.Context, path string) ([]byte, error) {
	return o.pathReq(ctx, TypeRead, path)
}

func (o ops) write(ctx context.Context, path string, value []byte) error {
	if err := checkPath(TypeWrite, path); err != nil {
		return err
	}
	p := make([]byte, 0, len(path)+1+len(value))
	p = append(append(append(p, path...), 0), value...)
	_, err := o.c.request(ctx, TypeWrite, o.tx, path, p)
	return err
}

func (o ops) mkdir(ctx context.Context, path string) error {
	_, err := o.pathReq(ctx, TypeMkdir, path)
	return err
}

func (o ops) remove(ctx context.Context, path string) error {
	_, err := o.pathReq(ctx, TypeRm, path)
	return err
}

// maxDirectoryPartRestarts bounds how often List restarts a DIRECTORY_PART
// walk because the directory changed under it.
const maxDirectoryPartRestarts = 8

func (o ops) list(ctx context.Context, path string) ([]string, error) {
	p, err := o.pathReq(ctx, TypeDirectory, path)
	if err == nil {
		return SplitStrings(p), nil
	}
	if !errors.Is(err, syscall.E2BIG) {
		return nil, err
	}
	for restart := 0; restart < maxDirectoryPartRestarts; restart++ {
		names, changed, err := o.listParts(ctx, path)
		if err != nil {
			return nil, err
		}
		if !changed {
			return names, nil
		}
	}
	return nil, fmt.Errorf("xenstore DIRECTORY_PART %q: directory kept changing during %d walks", path, maxDirectoryPartRestarts)
}

// listParts walks a directory with DIRECTORY_PART; changed reports that the
// generation count moved between two parts.
func (o ops) listParts(ctx context.Context, path string) (names []string, changed bool, err error) {
	gen := ""
	off := 0
	// Each part carries at least one name, so the walk is bounded by the
	// directory size; bound it anyway against a misbehaving server.
	for i := 0; i < 1<<20; i++ {
		req := JoinStrings(path, strconv.Itoa(off))
		p, err := o.c.request(ctx, TypeDirectoryPart, o.tx, path, req)
		if err != nil {
			return nil, false, err
		}
		g, part, end, err := ParseDirectoryPart(p)
		if err != nil {
			return nil, false, fmt.Errorf("xenstore DIRECTORY_PART %q: %w", path, err)
		}
		if gen == "" {
			gen = g
		} else if g != gen {
			return nil, true, nil
		}
		for _, n := range part {
			names = append(names, n)
			off += len(n) + 1
		}
		if end {
			return names, false, nil
		}
		if len(part) == 0 {
			return nil, false, fmt.Errorf("xenstore DIRECTORY_PART %q: empty part at offset %d", path, off)
		}
	}
	return nil, false, fmt.Errorf("xenstore DIRECTORY_PART %q: too many parts", path)
}

func (o ops) getPerms(ctx context.Context, path string) ([]Perm, error) {
	p, err := o.pathReq(ctx, TypeGetPerms, path)
	if err != nil {
		return nil, err
	}
	perms, err := ParsePerms(SplitStrings(p))
	if err != nil {
		return nil, fmt.Errorf("xenstore GET_PERMS %q: bad reply: %w", path, err)
	}
	return perms, nil
}

func (o ops) setPerms(ctx context.Context, path string, perms []Perm) error {
	if err := checkPath(TypeSetPerms, path); err != nil {
		return err
	}
	if err := validPerms(perms); err != nil {
		return &Error{Op: TypeSetPerms, Path: path, Name: "EINVAL", Errno: syscall.EINVAL, Local: err.Error()}
	}
	ss := make([]string, 0, len(perms)+1)
	ss = append(ss, path)
	for _, p := range perms {
		ss = append(ss, p.String())
	}
	_, err := o.c.request(ctx, TypeSetPerms, o.tx, path, JoinStrings(ss...))
	return err
}

// Read returns the value of a node.
func (c *Client) Read(ctx context.Context, path string) ([]byte, error) {
	return ops{c: c}.read(ctx, path)
}

// Write sets a node's value, creating it and missing parents.
func (c *Client) Write(ctx context.Context, path string, value []byte) error {
	return ops{c: c}.write(ctx, path, value)
}

// Mkdir creates a node (and missing parents) with an empty value if it does
// not exist yet.
func (c *Client) Mkdir(ctx context.Context, path string) error { return ops{c: c}.mkdir(ctx, path) }

// Remove deletes a node and all its children. Removing a missing node whose
// parent exists succeeds.
func (c *Client) Remove(ctx context.Context, path string) error { return ops{c: c}.remove(ctx, path) }

// List returns the names of a node's children, using DIRECTORY_PART when
// the list does not fit in one reply.
func (c *Client) List(ctx context.Context, path string) ([]string, error) {
	return ops{c: c}.list(ctx, path)
}

// GetPerms returns a node's permissions; the first entry is the owner and the
// default for domains not listed.
func (c *Client) GetPerms(ctx context.Context, path string) ([]Perm, error) {
	return ops{c: c}.getPerms(ctx, path)
}

// SetPerms replaces a node's permissions.
func (c *Client) SetPerms(ctx context.Context, path string, perms []Perm) error {
	return ops{c: c}.setPerms(ctx, path, perms)
}

func domidArg(op MsgType, domid uint32) error {
	if domid >= DomidFirstRes {
		return &Error{Op: op, Name: "EINVAL", Errno: syscall.EINVAL,
			Local: fmt.Sprintf("domid %d is not a real domain id", domid)}
	}
	return nil
}

func ud(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

// Introduce tells xenstored to talk to a domain whose store ring is at mfn
// and event channel port (INTRODUCE; fires @introduceDomain).
func (c *Client) Introduce(ctx context.Context, domid uint32, mfn uint64, port uint32) error {
	if err := domidArg(TypeIntroduce, domid); err != nil {
		return err
	}
	_, err := c.request(ctx, TypeIntroduce, 0, "", JoinStrings(ud(domid), strconv.FormatUint(mfn, 10), ud(port)))
	return err
}

// Release makes xenstored forget a domain (RELEASE; fires @releaseDomain).
func (c *Client) Release(ctx context.Context, domid uint32) error {
	if err := domidArg(TypeRelease, domid); err != nil {
		return err
	}
	_, err := c.request(ctx, TypeRelease, 0, "", JoinStrings(ud(domid)))
	return err
}

// Resume re-arms @releaseDomain for a domain that was shut down (RESUME).
func (c *Client) Resume(ctx context.Context, domid uint32) error {
	if err := domidArg(TypeResume, domid); err != nil {
		return err
	}
	_, err := c.request(ctx, TypeResume, 0, "", JoinStrings(ud(domid)))
	return err
}

// SetTarget gives domain domid full access to the nodes of domain target
// (SET_TARGET; used for device-model stub domains).
func (c *Client) SetTarget(ctx context.Context, domid, target uint32) error {
	if err := domidArg(TypeSetTarget, domid); err != nil {
		return err
	}
	if err := domidArg(TypeSetTarget, target); err != nil {
		return err
	}
	_, err := c.request(ctx, TypeSetTarget, 0, "", JoinStrings(ud(domid), ud(target)))
	return err
}

// GetDomainPath returns a domain's home path, /local/domain/<domid>.
func (c *Client) GetDomainPath(ctx context.Context, domid uint32) (string, error) {
	p, err := c.request(ctx, TypeGetDomainPath, 0, "", JoinStrings(ud(domid)))
	if err != nil {
		return "", err
	}
	return string(bytes.TrimRight(p, "\x00")), nil
}

// IsDomainIntroduced reports whether xenstored is talking to the domain.
func (c *Client) IsDomainIntroduced(ctx context.Context, domid uint32) (bool, error) {
	p, err := c.request(ctx, TypeIsDomainIntroduced, 0, "", JoinStrings(ud(domid)))
	if err != nil {
		return false, err
	}
	switch string(bytes.TrimRight(p, "\x00")) {
	case "T":
		return true, nil
	case "F":
		return false, nil
	}
	return false, fmt.Errorf("xenstore IS_DOMAIN_INTRODUCED %d: unexpected reply %q", domid, p)
}

// ResetWatches removes all watches and transactions of this connection on
// the daemon side (RESET_WATCHES); local Watch handles are closed.
func (c *Client) ResetWatches(ctx context.Context) error {
	_, err := c.request(ctx, TypeResetWatches, 0, "", JoinStrings(""))
	if err != nil {
		return err
	}
	c.mu.Lock()
	var ws []*Watch
	for _, l := range c.watches {
		ws = append(ws, l...)
	}
	c.watches = map[string][]*Watch{}
	c.mu.Unlock()
	for _, w := range ws {
		w.shutdown()
	}
	return nil
}

// Control sends a daemon-specific CONTROL command (e.g. "print", "msg") and
// returns the raw reply.
func (c *Client) Control(ctx context.Context, cmd string, args ...string) ([]byte, error) {
	if cmd == "" {
		return nil, &Error{Op: TypeControl, Name: "EINVAL", Errno: syscall.EINVAL, Local: "empty control command"}
	}
	return c.request(ctx, TypeControl, 0, "", JoinStrings(append([]string{cmd}, args...)...))
}

// Raw sends an arbitrary request (for tests and tools) and returns the reply
// payload; ERROR replies become *Error.
func (c *Client) Raw(ctx context.Context, t MsgType, tx uint32, payload []byte) ([]byte, error) {
	return c.request(ctx, t, tx, "", payload)
}

// ParseDirectoryPart decodes a DIRECTORY_PART reply: the generation count,
// the names in this part, and whether the list ends here (an empty name).
func ParseDirectoryPart(p []byte) (gen string, names []string, end bool, err error) {
	z := bytes.IndexByte(p, 0)
	if z < 1 {
		return "", nil, false, fmt.Errorf("reply without generation count")
	}
	gen = string(p[:z])
	rest := p[z+1:]
	for len(rest) > 0 {
		e := bytes.IndexByte(rest, 0)
		if e < 0 {
			return "", nil, false, fmt.Errorf("unterminated name")
		}
		if e == 0 {
			return gen, names, true, nil
		}
		names = append(names, string(rest[:e]))
		rest = rest[e+1:]
	}
	return gen, names, false, nil
}
