// Package kernel loads guest kernel images for the domain builder, treating
// every byte of them as hostile.
//
// A guest kernel is supplied by whoever owns the VM, yet the toolstack parses
// it in dom0 with full privilege: this is where libxenguest has had its
// security advisories. Everything here is bounds-checked against the input
// and against Limits before it is used, and nothing is trusted to be
// consistent: lengths, offsets, counts and declared sizes are each checked
// for overflow, for lying about the input's size, and for overlaps.
//
// What it understands:
//
//   - ELF64 x86_64 kernels (vmlinux): program headers, loadable segments and
//     the Xen ELF notes (XEN_ELFNOTE_*, xen/include/public/elfnote.h) found
//     in PT_NOTE segments or, failing those, SHT_NOTE sections. See ParseELF.
//   - ELF32 i386 kernels that boot as PVH, such as GRUB's i386-xen_pvh
//     image: the same, read from the 32-bit headers (elfclass.go), and
//     accepted only with a XEN_ELFNOTE_PHYS32_ENTRY inside an executable
//     segment and every segment below 4 GiB. Image.Class says which class
//     an image was; a 32-bit PV kernel is refused (no PHYS32_ENTRY).
//   - Linux bzImage: the x86 boot protocol setup header (boot protocol
//     2.08+ for payload_offset/payload_length) and the compressed payload
//     inside it: gzip, xz, zstd, lz4 (legacy frame), bzip2 or lzma, each
//     decompressed under a size and ratio limit (no decompression bombs).
//     See Unwrap.
//   - Bare compressed ELF kernels (vmlinux.gz and friends).
//   - Initial ramdisks, streamed as opaque bytes under a size limit
//     (OpenInitrd).
//
// Paths are hostile too: OpenFile, LoadFile and OpenInitrd open without
// blocking and accept only a regular file (by fstat of the open file, so a
// FIFO, a device or a directory is refused at once, naming its type), and
// read no more than the size that fstat gave.
//
// Load takes a kernel's bytes and returns an Image ready to place in guest
// memory; OpenFile, the entry point the builder uses, does that for a file.
//
// Memory: a decompressed kernel lives on the daemon's heap, so OpenFile
// takes its worst case from a Budget shared by all builds before it
// decompresses (budget.go): concurrent builds queue, and a kernel that
// cannot fit the whole budget is refused (ErrOverBudget) unread.
package kernel
