package xenstore

import "strings"

// ValidNodeName reports whether p is a node name C xenstored 4.17 accepts
// from any connection, dom0 included: is_valid_nodename's rules (absolute,
// no trailing or doubled '/', only the characters a-z A-Z 0-9 - / _ @, and
// at most RelPathMax bytes below a leading /local/domain/<id>/, or in all
// when there is none). The embedded server checks request paths with it,
// and the toolstack checks caller-supplied keys with it before they reach
// a server.
func ValidNodeName(p string) bool { return ValidNodeNameWithin(p, RelPathMax) }

// ValidNodeNameWithin is ValidNodeName with pathLen bytes allowed below
// /local/domain/<id>/ instead of RelPathMax (a server's configured quota).
func ValidNodeNameWithin(p string, pathLen int) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	if p == "/" {
		return true
	}
	if p[len(p)-1] == '/' || len(p)-domainPrefixLen(p) > pathLen {
		return false
	}
	prev := byte(0)
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '@':
		case c == '/':
			if prev == '/' {
				return false
			}
		default:
			return false
		}
		prev = c
	}
	return true
}

// domainPrefixLen returns the length of a leading "/local/domain/<id>/" as C
// xenstored's sscanf("/local/domain/%5u/%n") measures it: at most five
// characters of id, which may include a leading '-' (0 if there is none).
func domainPrefixLen(p string) int {
	const pre = "/local/domain/"
	if !strings.HasPrefix(p, pre) {
		return 0
	}
	i := len(pre)
	j := i
	if j < len(p) && p[j] == '-' {
		j++
	}
	digits := j
	for j < len(p) && j-i < 5 && p[j] >= '0' && p[j] <= '9' {
		j++
	}
	if j == digits || j >= len(p) || p[j] != '/' {
		return 0
	}
	return j + 1
}
