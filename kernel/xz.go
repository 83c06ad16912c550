package kernel

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"
	"hash/crc64"

	"github.com/ulikunitz/xz/lzma"
)

// The .xz container is parsed here rather than by github.com/ulikunitz/xz
// because Linux compresses x86 kernels with the x86 BCJ filter in front of
// LZMA2 (scripts/xz_wrap.sh), which that package does not implement. The
// LZMA2 decoding itself is ulikunitz's; the container, the integrity check
// and the BCJ filter are ours.

const (
	xzFilterX86   = 0x04
	xzFilterLZMA2 = 0x21
)

var crc64Table = crc64.MakeTable(crc64.ECMA)

// unxz decodes the first .xz stream in data into at most max bytes, and at
// most ratio output bytes per compressed byte read past ratioGrace.
func unxz(data []byte, max, ratio uint64) ([]byte, error) {
	const where = "xz payload"
	le := binary.LittleEndian
	size := uint64(len(data))
	if size < 12 {
		return nil, malformed(where, "%d bytes, shorter than the stream header", size)
	}
	if data[6] != 0 || data[7]&0xf0 != 0 {
		return nil, unsupported(where+" stream flags", "%#02x%02x", data[6], data[7])
	}
	if crc32.ChecksumIEEE(data[6:8]) != le.Uint32(data[8:]) {
		return nil, malformed(where+" stream header", "CRC32 mismatch")
	}
	check := data[7] & 0x0f
	var checkLen uint64
	switch check {
	case 0:
	case 1:
		checkLen = 4
	case 4:
		checkLen = 8
	case 10:
		checkLen = 32
	default:
		return nil, unsupported(where+" stream flags", "check type %d", check)
	}
	off := uint64(12)
	var out []byte
	for blk := 0; ; blk++ {
		if off >= size {
			return nil, malformed(where, "truncated before block %d", blk)
		}
		if data[off] == 0 { // index indicator: no more blocks
			break
		}
		bw := where + " block " + itoaU(uint64(blk))
		hlen := (uint64(data[off]) + 1) * 4
		hend, ok := span(off, hlen, size)
		if !ok {
			return nil, malformed(bw+" header", "header of %d bytes runs past the end", hlen)
		}
		hdr := data[off:hend]
		if crc32.ChecksumIEEE(hdr[:hlen-4]) != le.Uint32(hdr[hlen-4:]) {
			return nil, malformed(bw+" header", "CRC32 mismatch")
		}
		filters, err := xzFilters(hdr[:hlen-4], bw)
		if err != nil {
			return nil, err
		}
		lz := filters[len(filters)-1]
		dict := lz.dict
		// No match distance can exceed what the block may output.
		budget := max - uint64(len(out))
		if dict > budget {
			dict = budget
		}
		if dict < lzma.MinDictCap {
			dict = lzma.MinDictCap
		}
		br := bytes.NewReader(data[hend:])
		in := &countingReader{r: br, n: hend}
		r2, err := lzma.Reader2Config{DictCap: int(dict)}.NewReader2(in)
		if err != nil {
			return nil, malformed(bw, "LZMA2: %v", err)
		}
		e := &expansion{where: bw, max: budget, ratio: ratio, in: in, before: uint64(len(out))}
		if err := e.readFrom(r2); err != nil {
			e.release()
			return nil, err
		}
		b, err := e.bytes()
		if err != nil {
			return nil, err
		}
		if !r2.EOS() {
			return nil, malformed(bw, "LZMA2 data does not end with an end marker")
		}
		pos := size - uint64(br.Len())
		for pos%4 != 0 {
			if pos >= size || data[pos] != 0 {
				return nil, malformed(bw+" padding", "missing or non-zero")
			}
			pos++
		}
		cend, ok := span(pos, checkLen, size)
		if !ok {
			return nil, malformed(bw+" check", "truncated")
		}
		for _, f := range filters[:len(filters)-1] {
			bcjX86(b, f.start)
		}
		if err := xzVerify(check, b, data[pos:cend]); err != nil {
			return nil, malformed(bw+" check", "%v", err)
		}
		if out == nil {
			out = b // the usual single block: no copy
		} else {
			out = append(out, b...)
		}
		off = cend
	}
	if len(out) == 0 {
		return nil, malformed(where, "no data blocks")
	}
	return out, nil
}

type xzFilter struct {
	id    uint64
	dict  uint64 // LZMA2
	start uint32 // BCJ start offset
}

func xzFilters(h []byte, where string) ([]xzFilter, error) {
	flags := h[1]
	if flags&0x3c != 0 {
		return nil, unsupported(where+" header flags", "reserved bits set (%#02x)", flags)
	}
	nf := int(flags&3) + 1
	p := 2
	varint := func(what string) (uint64, error) {
		v, n := binary.Uvarint(h[p:])
		if n <= 0 || n > 9 {
			return 0, malformed(where+" header "+what, "bad variable-length integer")
		}
		p += n
		return v, nil
	}
	if flags&0x40 != 0 {
		if _, err := varint("compressed size"); err != nil {
			return nil, err
		}
	}
	if flags&0x80 != 0 {
		if _, err := varint("uncompressed size"); err != nil {
			return nil, err
		}
	}
	var fs []xzFilter
	for i := 0; i < nf; i++ {
		id, err := varint("filter id")
		if err != nil {
			return nil, err
		}
		psz, err := varint("filter properties size")
		if err != nil {
			return nil, err
		}
		if psz > uint64(len(h)-p) {
			return nil, malformed(where+" header filter properties", "size %d runs past the header", psz)
		}
		props := h[p : p+int(psz)]
		p += int(psz)
		last := i == nf-1
		switch {
		case id == xzFilterLZMA2 && last:
			if len(props) != 1 || props[0] > 40 {
				return nil, malformed(where+" LZMA2 properties", "% x", props)
			}
			d := uint64(2|props[0]&1) << (props[0]/2 + 11)
			if props[0] == 40 {
				d = 0xffffffff
			}
			fs = append(fs, xzFilter{id: id, dict: d})
		case id == xzFilterX86 && !last:
			f := xzFilter{id: id}
			switch len(props) {
			case 0:
			case 4:
				f.start = binary.LittleEndian.Uint32(props)
			default:
				return nil, malformed(where+" x86 BCJ properties", "%d bytes, want 0 or 4", len(props))
			}
			fs = append(fs, f)
		default:
			return nil, unsupported(where+" filter chain", "filter %#x at position %d (only x86 BCJ then LZMA2 are supported)", id, i)
		}
	}
	for ; p < len(h); p++ {
		if h[p] != 0 {
			return nil, malformed(where+" header padding", "non-zero")
		}
	}
	return fs, nil
}

func xzVerify(check byte, b, sum []byte) error {
	le := binary.LittleEndian
	switch check {
	case 1:
		if crc32.ChecksumIEEE(b) != le.Uint32(sum) {
			return errString("CRC32 of the uncompressed data does not match")
		}
	case 4:
		if crc64.Checksum(b, crc64Table) != le.Uint64(sum) {
			return errString("CRC64 of the uncompressed data does not match")
		}
	case 10:
		h := sha256.Sum256(b)
		if !bytes.Equal(h[:], sum) {
			return errString("SHA-256 of the uncompressed data does not match")
		}
	}
	return nil
}

type errString string

func (e errString) Error() string { return string(e) }

// bcjX86 undoes the x86 branch/call/jump filter in place: the encoder turned
// the relative targets of E8/E9 instructions into absolute ones to help
// compression. start is the filter's start offset.
func bcjX86(buf []byte, start uint32) {
	testMSByte := func(b byte) bool { return b == 0x00 || b == 0xff }
	allowed := [8]bool{true, true, true, false, true, false, false, false}
	bitNum := [8]uint32{0, 1, 2, 2, 3, 3, 3, 3}
	if len(buf) <= 4 {
		return
	}
	limit := len(buf) - 4
	prevPos := -1
	var prevMask uint32
	for i := 0; i < limit; i++ {
		if buf[i]&0xfe != 0xe8 {
			continue
		}
		d := i - prevPos
		if d > 3 {
			prevMask = 0
		} else {
			prevMask = (prevMask << uint(d-1)) & 7
			if prevMask != 0 {
				b := buf[i+4-int(bitNum[prevMask])]
				if !allowed[prevMask] || testMSByte(b) {
					prevPos = i
					prevMask = prevMask<<1 | 1
					continue
				}
			}
		}
		prevPos = i
		if !testMSByte(buf[i+4]) {
			prevMask = prevMask<<1 | 1
			continue
		}
		src := binary.LittleEndian.Uint32(buf[i+1:])
		var dest uint32
		for {
			dest = src - (start + uint32(i) + 5)
			if prevMask == 0 {
				break
			}
			j := bitNum[prevMask] * 8
			if !testMSByte(byte(dest >> (24 - j))) {
				break
			}
			src = dest ^ (1<<(32-j) - 1)
		}
		dest &= 0x01ffffff
		dest |= 0 - (dest & 0x01000000)
		binary.LittleEndian.PutUint32(buf[i+1:], dest)
		i += 4
	}
}

func itoaU(v uint64) string {
	var b [20]byte
	p := len(b)
	for {
		p--
		b[p] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[p:])
		}
	}
}
