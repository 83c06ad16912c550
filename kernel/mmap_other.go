//go:build !linux

package kernel

import "context"

// OpenFile is LoadFile where mapping files is not implemented; the whole
// file counts against mem, with decompressionCost.
func OpenFile(ctx context.Context, path string, lim Limits, mem *Budget) (*Image, func() error, error) {
	data, err := readFileLimited(path, lim.withDefaults().MaxImageSize, "kernel")
	if err != nil {
		return nil, nil, err
	}
	give, err := mem.acquire(ctx, uint64(len(data))+decompressionCost(data, lim), path)
	if err != nil {
		return nil, nil, err
	}
	img, err := Load(data, lim)
	if err != nil {
		give()
		return nil, nil, err
	}
	return img, func() error { give(); return nil }, nil
}

// newChunk allocates an expandChunk-byte output buffer (on the heap where
// mapping is not implemented); freeChunk drops it.
func newChunk() (*[]byte, error) {
	b := make([]byte, expandChunk)
	return &b, nil
}

func freeChunk(*[]byte) {}
