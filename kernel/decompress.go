package kernel

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz/lzma"
)

// Compression formats recognised by their magic bytes.
const (
	CompressionNone  = ""
	CompressionGzip  = "gzip"
	CompressionXZ    = "xz"
	CompressionZstd  = "zstd"
	CompressionLZ4   = "lz4"
	CompressionBzip2 = "bzip2"
	CompressionLZMA  = "lzma"
	CompressionLZO   = "lzo"
)

// lz4LegacyMagic starts an LZ4 legacy frame (what the kernel's "lz4 -l" writes).
const lz4LegacyMagic = 0x184C2102

// lz4LegacyBlock is the uncompressed size of each legacy frame block.
const lz4LegacyBlock = 8 << 20

// DetectCompression names the compression of data from its magic bytes, or
// returns CompressionNone.
func DetectCompression(data []byte) string {
	switch {
	case bytes.HasPrefix(data, []byte{0x1f, 0x8b}):
		return CompressionGzip
	case bytes.HasPrefix(data, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return CompressionXZ
	case bytes.HasPrefix(data, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return CompressionZstd
	case bytes.HasPrefix(data, []byte{0x02, 0x21, 0x4c, 0x18}):
		return CompressionLZ4
	case bytes.HasPrefix(data, []byte("BZh")):
		return CompressionBzip2
	case bytes.HasPrefix(data, []byte{0x5d, 0x00, 0x00}):
		return CompressionLZMA
	case bytes.HasPrefix(data, []byte{0x89, 'L', 'Z', 'O'}):
		return CompressionLZO
	}
	return CompressionNone
}

// Decompress expands data (in the format named by DetectCompression) into at
// most min(lim.MaxDecompressed, lim.MaxRatio*len(data)) bytes; larger output
// is a decompression bomb and fails with ErrTooLarge as soon as the output
// passes the limit, or as soon as it runs more than 16 MiB ahead of
// lim.MaxRatio times the compressed bytes read so far. Data after the first
// complete stream (such as the kernel's 4-byte size trailer) is ignored.
func Decompress(data []byte, lim Limits) ([]byte, string, error) {
	lim = lim.withDefaults()
	return decompress(data, lim, outputLimit(data, lim))
}

// outputLimit is min(lim.MaxDecompressed, lim.MaxRatio*len(data)).
func outputLimit(data []byte, lim Limits) uint64 {
	max := lim.MaxDecompressed
	if r := lim.MaxRatio * uint64(len(data)); r/lim.MaxRatio == uint64(len(data)) && r < max {
		max = r
	}
	return max
}

// decompress is Decompress with the output limit max.
func decompress(data []byte, lim Limits, max uint64) ([]byte, string, error) {
	format := DetectCompression(data)
	where := format + " payload"
	in := &countingReader{r: bytes.NewReader(data)}
	var rd io.Reader
	var err error
	switch format {
	case CompressionNone:
		return nil, format, unsupported("payload", "unknown compression (first bytes % x)", head(data, 8))
	case CompressionLZO:
		return nil, format, unsupported(where, "LZO is not supported")
	case CompressionGzip:
		var zr *gzip.Reader
		zr, err = gzip.NewReader(in)
		if err == nil {
			zr.Multistream(false)
			rd = zr
		}
	case CompressionXZ:
		out, err := unxz(data, max, lim.MaxRatio)
		return out, format, err
	case CompressionZstd, CompressionBzip2:
		// These decoders read on after the first stream, so the kernel's
		// 4-byte size trailer looks like a truncated next stream: when the
		// whole payload fails, try again without the trailer.
		out, err := decodeMulti(format, data, max, lim)
		if err != nil && len(data) > 8 && !errors.Is(err, ErrTooLarge) {
			if out2, err2 := decodeMulti(format, data[:len(data)-4], max, lim); err2 == nil {
				return out2, format, nil
			}
		}
		return out, format, err
	case CompressionLZ4:
		return lz4Legacy(data, max, lim.MaxRatio)
	case CompressionLZMA:
		rd, err = lzma.ReaderConfig{DictCap: 64 << 20}.NewReader(in)
	}
	if err != nil {
		return nil, format, malformed(where, "bad header: %v", err)
	}
	out, err := expand(rd, in, max, lim.MaxRatio, where)
	return out, format, err
}

func decodeMulti(format string, data []byte, max uint64, lim Limits) ([]byte, error) {
	where := format + " payload"
	in := &countingReader{r: bytes.NewReader(data)}
	if format == CompressionBzip2 {
		return expand(bzip2.NewReader(in), in, max, lim.MaxRatio, where)
	}
	// The window is bounded by the size limit, not by the ratio: a small
	// frame may legitimately declare a large window.
	zr, err := zstd.NewReader(in, zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxMemory(lim.MaxDecompressed), zstd.WithDecoderMaxWindow(min(lim.MaxDecompressed, 128<<20)))
	if err != nil {
		return nil, malformed(where, "bad header: %v", err)
	}
	defer zr.Close()
	return expand(zr, in, max, lim.MaxRatio, where)
}

// lz4Blocks recycles the 8 MiB block buffers of lz4Legacy.
var lz4Blocks = sync.Pool{New: func() any { b := make([]byte, lz4LegacyBlock); return &b }}

// lz4Legacy decodes the LZ4 legacy frame as the kernel writes it: the magic,
// then blocks each preceded by its compressed size (u32 LE), each expanding
// to at most 8 MiB. The stream ends at the end of the data, at a 4-byte size
// trailer, or at a zero block size; a repeated magic starts a new frame.
func lz4Legacy(data []byte, max, ratio uint64) ([]byte, string, error) {
	const where = "lz4 payload"
	le := binary.LittleEndian
	off := uint64(4)
	size := uint64(len(data))
	// The data is in memory, not read through in: in.n is advanced by hand
	// to each block's end so the ratio check sees what was decoded.
	in := &countingReader{}
	out := &expansion{where: where, max: max, ratio: ratio, in: in}
	defer out.release()
	block := lz4Blocks.Get().(*[]byte)
	defer lz4Blocks.Put(block)
	for nblk := 0; off < size; nblk++ {
		if size-off < 4 {
			return nil, CompressionLZ4, malformed(where, "truncated block header at offset %d", off)
		}
		csize := uint64(le.Uint32(data[off:]))
		if csize == lz4LegacyMagic {
			off += 4
			continue
		}
		if csize == 0 {
			break
		}
		end, ok := span(off+4, csize, size)
		if !ok {
			if size-off == 4 && out.n > 0 {
				break // the kernel's uncompressed-size trailer
			}
			return nil, CompressionLZ4, malformed(where, "block %d at offset %d claims %d compressed bytes, only %d remain", nblk, off, csize, size-off-4)
		}
		if csize > uint64(lz4.CompressBlockBound(lz4LegacyBlock)) {
			return nil, CompressionLZ4, malformed(where, "block %d claims %d compressed bytes, more than an 8 MiB block can need", nblk, csize)
		}
		n, err := lz4.UncompressBlock(data[off+4:end], *block)
		if err != nil {
			return nil, CompressionLZ4, malformed(where, "block %d at offset %d: %v", nblk, off, err)
		}
		in.n = end
		if err := out.write((*block)[:n]); err != nil {
			return nil, CompressionLZ4, err
		}
		off = end
	}
	b, err := out.bytes()
	return b, CompressionLZ4, err
}

func head(b []byte, n int) []byte {
	if len(b) < n {
		return b
	}
	return b[:n]
}
