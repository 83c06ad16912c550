package xenstored

import (
	"strings"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// node is one xenstore node. Nodes in the committed tree are never modified
// in place: a change stores a fresh copy (with a fresh generation), so a
// transaction overlay can share unmodified nodes with the tree.
type node struct {
	value    []byte
	perms    []xenstore.Perm
	children []string // leaf names in creation order, like the C daemon
	gen      uint64
	// tail: this node may append to its children's backing array in place.
	// Only one node ever holds it for a given array, so appends never clobber
	// a name another node can see (appends write past every holder's len).
	tail bool
}

// withChild returns a copy of n with one more child, sharing n's children
// array when n owns its tail (O(1) instead of copying thousands of names
// under /local/domain).
func (n *node) withChild(name string) *node {
	c := &node{value: n.value, perms: n.perms, tail: true}
	if n.tail {
		n.tail = false
		c.children = append(n.children, name)
	} else {
		c.children = make([]string, len(n.children), len(n.children)*5/4+4)
		copy(c.children, n.children)
		c.children = append(c.children, name)
	}
	return c
}

// withoutChild returns a copy of n without the child name. The copy gets a
// fresh children array (one copy, the least a removal can do while n stays
// shared) with room to grow and owns its tail, so creating a sibling next
// appends in place instead of copying again.
func (n *node) withoutChild(name string) *node {
	c := &node{value: n.value, perms: n.perms, tail: true}
	c.children = make([]string, 0, len(n.children)*5/4+4)
	// Names are unique: search from the end, where the newest children
	// (the ones most often removed again) are.
	for i := len(n.children) - 1; i >= 0; i-- {
		if n.children[i] == name {
			c.children = append(append(c.children, n.children[:i]...), n.children[i+1:]...)
			return c
		}
	}
	c.children = append(c.children, n.children...)
	return c
}

func (n *node) childLen() int {
	l := 0
	for _, c := range n.children {
		l += len(c) + 1
	}
	return l
}

// size approximates the C daemon's record size used for the node-size
// quota: a 24-byte header, 8 bytes per permission, the value and the child
// names.
func (n *node) size() int {
	return 24 + 8*len(n.perms) + len(n.value) + n.childLen()
}

func (n *node) owner() uint32 { return n.perms[0].Domid }

// view is what request handlers read and change: the committed tree or a
// transaction's overlay on it.
type view interface {
	get(path string) *node
	put(path string, n *node)
	del(path string)
	// nodesOwned returns how many nodes domid owns as seen by this view.
	nodesOwned(domid uint32) int
}

// tree is the committed store.
type tree struct {
	nodes map[string]*node
	gen   uint64
	owned map[uint32]int                 // node count per owner domid
	paths map[uint32]map[string]struct{} // guest domid -> paths it owns
	refs  map[uint32]map[string]struct{} // domid -> paths whose perms name it (not as owner)
}

func newTree() *tree {
	t := &tree{
		nodes: make(map[string]*node),
		owned: make(map[uint32]int),
		paths: make(map[uint32]map[string]struct{}),
		refs:  make(map[uint32]map[string]struct{}),
	}
	root := &node{perms: []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}}}
	t.put("/", root)
	return t
}

func (t *tree) nextGen() uint64 { t.gen++; return t.gen }

func (t *tree) get(path string) *node { return t.nodes[path] }

func (t *tree) nodesOwned(domid uint32) int { return t.owned[domid] }

func (t *tree) put(path string, n *node) {
	if old := t.nodes[path]; old != nil {
		t.unindex(path, old)
	}
	n.gen = t.nextGen()
	t.nodes[path] = n
	t.owned[n.owner()]++
	if o := n.owner(); o != 0 {
		m := t.paths[o]
		if m == nil {
			m = make(map[string]struct{})
			t.paths[o] = m
		}
		m[path] = struct{}{}
	}
	for _, p := range n.perms[1:] {
		if p.Domid == n.owner() {
			continue
		}
		m := t.refs[p.Domid]
		if m == nil {
			m = make(map[string]struct{})
			t.refs[p.Domid] = m
		}
		m[path] = struct{}{}
	}
}

func (t *tree) unindex(path string, old *node) {
	if c := t.owned[old.owner()] - 1; c > 0 {
		t.owned[old.owner()] = c
	} else {
		delete(t.owned, old.owner())
	}
	if m := t.paths[old.owner()]; m != nil {
		delete(m, path)
		if len(m) == 0 {
			delete(t.paths, old.owner())
		}
	}
	for _, p := range old.perms[1:] {
		if m := t.refs[p.Domid]; m != nil {
			delete(m, path)
			if len(m) == 0 {
				delete(t.refs, p.Domid)
			}
		}
	}
}

func (t *tree) del(path string) {
	if old := t.nodes[path]; old != nil {
		t.unindex(path, old)
		delete(t.nodes, path)
	}
}

// txView is a transaction's overlay. Every node it reads or changes is
// recorded with the generation it had (0: absent); the commit fails if any of
// them changed meanwhile, which is the C daemon's conflict rule (a parent's
// generation changes when its child list does).
type txView struct {
	t        *tree
	over     map[string]*node // nil value: deleted in this transaction
	accessed map[string]uint64
	ownDelta map[uint32]int
	changed  int
	events   []event
}

func newTxView(t *tree) *txView {
	return &txView{
		t:        t,
		over:     make(map[string]*node),
		accessed: make(map[string]uint64),
		ownDelta: make(map[uint32]int),
	}
}

func (v *txView) note(path string) {
	if _, ok := v.accessed[path]; ok {
		return
	}
	if _, ok := v.over[path]; ok {
		return
	}
	var g uint64
	if n := v.t.nodes[path]; n != nil {
		g = n.gen
	}
	v.accessed[path] = g
}

func (v *txView) get(path string) *node {
	if n, ok := v.over[path]; ok {
		return n
	}
	v.note(path)
	return v.t.nodes[path]
}

func (v *txView) put(path string, n *node) {
	old := v.get(path)
	if old != nil {
		v.ownDelta[old.owner()]--
	}
	if _, ok := v.over[path]; !ok {
		v.changed++
	}
	n.gen = v.t.nextGen()
	v.over[path] = n
	v.ownDelta[n.owner()]++
}

func (v *txView) del(path string) {
	old := v.get(path)
	if old == nil {
		return
	}
	v.ownDelta[old.owner()]--
	if _, ok := v.over[path]; !ok {
		v.changed++
	}
	v.over[path] = nil
}

func (v *txView) nodesOwned(domid uint32) int { return v.t.owned[domid] + v.ownDelta[domid] }

// conflict reports whether any node the transaction used changed since.
func (v *txView) conflict() bool {
	for p, g := range v.accessed {
		var cur uint64
		if n := v.t.nodes[p]; n != nil {
			cur = n.gen
		}
		if cur != g {
			return true
		}
	}
	return false
}

// apply writes the overlay into the tree.
func (v *txView) apply() {
	for p, n := range v.over {
		if n == nil {
			v.t.del(p)
		} else {
			v.t.put(p, n)
		}
	}
}

// parentPath returns the parent of an absolute path ("/" for top level).
func parentPath(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "/"
	}
	return p[:i]
}

func baseName(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

func childPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}

// validNodeName applies the C daemon's is_valid_nodename: absolute, no
// trailing or doubled slash, only alphanumerics and -/_@, and at most pathLen
// bytes below a leading /local/domain/<id>/ (the whole path counts when there
// is none). The length rule holds for every connection, dom0 included.
func validNodeName(p string, pathLen int) bool {
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
