package xenctrl

import (
	"bytes"
	"testing"
)

// FuzzParseHVMContext: any blob parses or fails cleanly, and what parses
// encodes back to the blob up to its END record.
func FuzzParseHVMContext(f *testing.F) {
	f.Add(EncodeHVMContext([]HVMRecord{{Code: HVMSaveCodeHeader, Body: EncodeHVMSaveHeader(HVMSaveHeader{Magic: HVMSaveMagic, Version: HVMSaveVersion})},
		{Code: HVMSaveCodeCPU, Instance: 1, Body: make([]byte, HVMCPUSize)}}))
	f.Add([]byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, blob []byte) {
		recs, err := ParseHVMContext(blob)
		if err != nil {
			return
		}
		out := EncodeHVMContext(recs)
		if out = out[:len(out)-hvmSaveDescriptorSize]; !bytes.HasPrefix(blob, out) {
			t.Fatalf("re-encoded %x, not a prefix of %x", out, blob)
		}
	})
}
