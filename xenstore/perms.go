package xenstore

import (
	"fmt"
	"strconv"
)

// Access is one node permission letter.
type Access byte

// Access values as sent on the wire.
const (
	AccessNone  Access = 'n'
	AccessRead  Access = 'r'
	AccessWrite Access = 'w'
	AccessBoth  Access = 'b'
)

// CanRead reports whether a grants read access.
func (a Access) CanRead() bool { return a == AccessRead || a == AccessBoth }

// CanWrite reports whether a grants write access.
func (a Access) CanWrite() bool { return a == AccessWrite || a == AccessBoth }

// Perm is one permission entry. In a node's list the first entry names the
// owner (who has full access) and gives the default access for every domain
// not listed in a later entry.
type Perm struct {
	Domid  uint32
	Access Access
}

// String returns the wire form, e.g. "r5".
func (p Perm) String() string {
	return string(rune(p.Access)) + strconv.FormatUint(uint64(p.Domid), 10)
}

// ParsePerm parses the wire form of a permission ("b0", "r12").
func ParsePerm(s string) (Perm, error) {
	if len(s) < 2 {
		return Perm{}, fmt.Errorf("xenstore: permission %q: want a letter n|r|w|b followed by a domid", s)
	}
	a := Access(s[0])
	switch a {
	case AccessNone, AccessRead, AccessWrite, AccessBoth:
	default:
		return Perm{}, fmt.Errorf("xenstore: permission %q: access letter must be n, r, w or b", s)
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return Perm{}, fmt.Errorf("xenstore: permission %q: domid must be decimal", s)
		}
	}
	d, err := strconv.ParseUint(s[1:], 10, 16)
	if err != nil {
		return Perm{}, fmt.Errorf("xenstore: permission %q: domid out of range 0..65535", s)
	}
	return Perm{Domid: uint32(d), Access: a}, nil
}

// ParsePerms parses a list of wire permission strings.
func ParsePerms(ss []string) ([]Perm, error) {
	if len(ss) == 0 {
		return nil, fmt.Errorf("xenstore: empty permission list")
	}
	out := make([]Perm, 0, len(ss))
	for _, s := range ss {
		p, err := ParsePerm(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func validPerms(perms []Perm) error {
	if len(perms) == 0 {
		return fmt.Errorf("empty permission list (the first entry names the owner)")
	}
	for i, p := range perms {
		switch p.Access {
		case AccessNone, AccessRead, AccessWrite, AccessBoth:
		default:
			return fmt.Errorf("perms[%d].Access %q is not n, r, w or b", i, rune(p.Access))
		}
		if p.Domid > 0xFFFF {
			return fmt.Errorf("perms[%d].Domid %d out of range 0..65535", i, p.Domid)
		}
	}
	return nil
}
