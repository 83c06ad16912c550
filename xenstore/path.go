package xenstore

// ValidNodeName reports whether p is a node name xenstored accepts: the C
// daemon's is_valid_nodename rules (absolute, at most AbsPathMax bytes, no
// trailing or doubled '/', only the characters a-z A-Z 0-9 - / _ @). The
// embedded server checks request paths with it, and the toolstack checks
// caller-supplied keys with it before they reach a server.
func ValidNodeName(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	if p == "/" {
		return true
	}
	if p[len(p)-1] == '/' || len(p) > AbsPathMax {
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
