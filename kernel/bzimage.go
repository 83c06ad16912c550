package kernel

import (
	"bytes"
	"encoding/binary"
)

// x86 boot protocol setup header offsets (Documentation/arch/x86/boot.rst).
const (
	bzSetupSects   = 0x1f1
	bzBootFlag     = 0x1fe
	bzHeaderMagic  = 0x202
	bzVersion      = 0x206
	bzLoadFlags    = 0x211
	bzPayloadOff   = 0x248
	bzPayloadLen   = 0x24c
	bzMinHeaderLen = 0x250
	bzMinVersion   = 0x0208
)

// IsBzImage reports whether data starts like a Linux x86 bzImage.
func IsBzImage(data []byte) bool {
	return len(data) >= bzMinHeaderLen &&
		binary.LittleEndian.Uint16(data[bzBootFlag:]) == 0xAA55 &&
		string(data[bzHeaderMagic:bzHeaderMagic+4]) == "HdrS"
}

// BzImageInfo is what the setup header says about a bzImage.
type BzImageInfo struct {
	Version        uint16 // boot protocol version, e.g. 0x020f
	SetupSects     int
	PayloadOffset  uint64 // from the start of the file
	PayloadLength  uint64
	DeclaredSize   uint64 // the payload's 4-byte uncompressed-size trailer
	Compression    string
	DecompressedSz uint64
}

// Unwrap extracts and decompresses the kernel inside a bzImage, checking
// the setup header against the file and the declared size against lim.
func Unwrap(data []byte, lim Limits) ([]byte, BzImageInfo, error) {
	lim = lim.withDefaults()
	var info BzImageInfo
	size := uint64(len(data))
	if size > lim.MaxImageSize {
		return nil, info, tooLarge("bzImage", "file is %d bytes (limit %d)", size, lim.MaxImageSize)
	}
	if size < bzMinHeaderLen {
		return nil, info, malformed("bzImage setup header", "file is %d bytes, shorter than the setup header (%d)", size, bzMinHeaderLen)
	}
	le := binary.LittleEndian
	if f := le.Uint16(data[bzBootFlag:]); f != 0xAA55 {
		return nil, info, malformed("bzImage setup header boot_flag", "%#04x, want 0xAA55", f)
	}
	if string(data[bzHeaderMagic:bzHeaderMagic+4]) != "HdrS" {
		return nil, info, malformed("bzImage setup header header", "%q, want \"HdrS\"", data[bzHeaderMagic:bzHeaderMagic+4])
	}
	info.Version = le.Uint16(data[bzVersion:])
	if info.Version < bzMinVersion {
		return nil, info, unsupported("bzImage setup header version", "boot protocol %d.%02d, need 2.08 or later for payload_offset", info.Version>>8, info.Version&0xff)
	}
	info.SetupSects = int(data[bzSetupSects])
	if info.SetupSects == 0 {
		info.SetupSects = 4 // as the boot protocol says
	}
	setupLen := uint64(info.SetupSects+1) * 512
	if setupLen > size {
		return nil, info, malformed("bzImage setup header setup_sects", "%d sectors of setup (%d bytes) but the file is %d bytes", info.SetupSects, setupLen, size)
	}
	poff := uint64(le.Uint32(data[bzPayloadOff:]))
	plen := uint64(le.Uint32(data[bzPayloadLen:]))
	info.PayloadOffset = setupLen + poff
	info.PayloadLength = plen
	if _, ok := span(info.PayloadOffset, plen, size); !ok {
		return nil, info, malformed("bzImage setup header payload_offset", "payload at %#x length %d runs past the end of the file (%d bytes)", info.PayloadOffset, plen, size)
	}
	if plen < 8 {
		return nil, info, malformed("bzImage setup header payload_length", "%d bytes is too short for a compressed kernel", plen)
	}
	payload := data[info.PayloadOffset : info.PayloadOffset+plen]
	info.DeclaredSize = uint64(le.Uint32(payload[plen-4:]))
	if info.DeclaredSize > lim.MaxDecompressed {
		return nil, info, tooLarge("bzImage payload size trailer", "declares %d bytes uncompressed (limit %d)", info.DeclaredSize, lim.MaxDecompressed)
	}
	// Linux's trailer is the exact size of what the payload expands to, and
	// libxenguest refuses a payload that expands to anything else: output
	// past it is refused as soon as it appears.
	out, format, err := decompress(payload, lim, min(outputLimit(payload, lim), info.DeclaredSize))
	info.Compression = format
	if err != nil {
		return nil, info, err
	}
	info.DecompressedSz = uint64(len(out))
	return out, info, nil
}

// Load parses a kernel image in any supported wrapping: a bare ELF, a
// bzImage, or a compressed ELF (vmlinux.gz and friends).
func Load(data []byte, lim Limits) (*Image, error) {
	lim = lim.withDefaults()
	if uint64(len(data)) > lim.MaxImageSize {
		return nil, tooLarge("kernel", "file is %d bytes (limit %d)", len(data), lim.MaxImageSize)
	}
	switch {
	case bytes.HasPrefix(data, []byte("\x7fELF")):
		return ParseELF(data, lim)
	case len(data) > bzHeaderMagic+4 && string(data[bzHeaderMagic:bzHeaderMagic+4]) == "HdrS":
		elf, info, err := Unwrap(data, lim)
		if err != nil {
			return nil, err
		}
		img, err := ParseELF(elf, lim)
		if err != nil {
			return nil, err
		}
		img.Compression = "bzImage+" + info.Compression
		return img, nil
	case DetectCompression(data) != CompressionNone:
		elf, format, err := Decompress(data, lim)
		if err != nil {
			return nil, err
		}
		img, err := ParseELF(elf, lim)
		if err != nil {
			return nil, err
		}
		img.Compression = format
		return img, nil
	}
	return nil, unsupported("kernel", "neither ELF, bzImage nor a known compression (first bytes % x)", head(data, 8))
}

// LoadFile reads and parses the kernel at path (see Load), refusing files
// larger than lim.MaxImageSize before reading them.
func LoadFile(path string, lim Limits) (*Image, error) {
	data, err := readFileLimited(path, lim.withDefaults().MaxImageSize, "kernel")
	if err != nil {
		return nil, err
	}
	return Load(data, lim)
}
