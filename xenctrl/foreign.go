package xenctrl

// ForeignMapping is memory of another domain mapped into this process: on
// Xen through privcmd (MapForeign), in the simulator a copy of the frames.
type ForeignMapping struct {
	// Mem holds the mapped frames in the order they were asked for, one
	// PageSize each.
	Mem   []byte
	unmap func() error
}

// NewForeignMapping wraps mem; Unmap calls unmap once. It is for
// implementations of the hypervisor (MapForeign, the simulator's).
func NewForeignMapping(mem []byte, unmap func() error) *ForeignMapping {
	return &ForeignMapping{Mem: mem, unmap: unmap}
}

// Unmap releases the mapping; Mem must not be used afterwards. Unmapping
// twice does nothing.
func (m *ForeignMapping) Unmap() error {
	if m.Mem == nil {
		return nil
	}
	m.Mem = nil
	return m.unmap()
}
