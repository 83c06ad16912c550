//go:build !linux

package kernel

// OpenFile is LoadFile where mapping files is not implemented.
func OpenFile(path string, lim Limits) (*Image, func() error, error) {
	img, err := LoadFile(path, lim)
	if err != nil {
		return nil, nil, err
	}
	return img, func() error { return nil }, nil
}
