// Package stream reads and writes the Xen domain image format: the byte
// stream a Xen toolstack writes when it saves a domain to a file or sends
// it to another host (Xen's docs/specs/libxc-migration-stream.pandoc,
// versions 2 and 3; Xen 4.14 and later write version 3).
//
// # The model
//
// A stream is an image header (marker, "XENF", version, endianness, always
// big-endian on the wire), a domain header (x86 PV or x86 HVM, page shift,
// the Xen version that saved it), then records until an END record. Each
// record is a type, a body length and the body, padded with zeros to a
// multiple of 8 octets. The records carry the guest's memory (PAGE_DATA:
// frame numbers with their page types, then the contents of the pages that
// have contents) and its state: CPU policy, vCPU contexts, HVM context and
// parameters, TSC settings, the shared info page.
//
// Every record is a Go type here, named after the spec (PageData,
// X86PVInfo, HVMParams, ...). These types describe the file format, not a
// hypervisor ABI: the opaque blobs Xen hands out (vCPU contexts, HVM
// context, shared info) stay []byte.
//
// Writer emits a stream from those types and refuses to write one Xen
// would refuse to read. Reader decodes a stream that comes from another
// host and trusts nothing in it: every length, count and frame number is
// checked against the spec and against Limits (a cap on a record's
// length, on the pages of one PAGE_DATA record, and the highest frame
// number the caller accepts) before anything is allocated, so a reader
// never holds more than one record of at most Limits.MaxRecordLength
// bytes. Records must come in the order the spec and Xen require (see
// sequence); an error names the record, its offset in the stream and
// what is wrong with it (*FormatError).
//
// Unknown mandatory records are refused and unknown optional ones (bit 31
// of the type set) are skipped, as the spec says. The records of Remus and
// COLO checkpointed streams (CHECKPOINT, CHECKPOINT_DIRTY_PFN_LIST) and of
// debugging (VERIFY, the withdrawn TOOLSTACK) are known but refused.
//
// # The libxl layer
//
// xl and libxl wrap the libxc stream in a layer of their own (Xen's
// docs/specs/libxl-migration-stream.pandoc, version 2): a "LibxlFmt"
// header and records of the same framing, one of which, LIBXC_CONTEXT,
// says that a whole libxc stream follows; the device model's state comes
// in EMULATOR_* records after it. LibxlWriter and LibxlReader read and
// write that layer around a Writer and a Reader (libxl.go); the same
// checks and limits apply.
//
// Only little-endian streams are read and written (every x86 host writes
// those), and only 4 KiB pages (page shift 12, x86).
package stream
