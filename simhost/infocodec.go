package simhost

import (
	"encoding/binary"
	"fmt"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// DomainInfo lists travel as fixed-size little-endian records in one bytes
// field (DomainRecords in xenopsd.simhost.v1): one buffer to encode and
// decode, where a message per domain would cost an allocation each on the
// 10,000-domain lists the daemon polls.
//
//	0  u16 domid        2  u8 flags      3  u8 shutdown reason
//	4  [16] handle      20 u64 tot_pages 28 u64 max_pages
//	36 u64 cpu_time     44 u32 online    48 u32 max_vcpu_id
//	52 u32 cpupool      (56 bytes)
const infoRecordSize = 56

const (
	infoDying = 1 << iota
	infoHVM
	infoHAP
	infoShutdown
	infoPaused
	infoBlocked
	infoRunning
)

var le = binary.LittleEndian

func encodeInfos(ds []xenctrl.DomainInfo) []byte {
	b := make([]byte, len(ds)*infoRecordSize)
	for i, d := range ds {
		r := b[i*infoRecordSize:]
		le.PutUint16(r[0:], uint16(d.Domid))
		var f byte
		for bit, on := range []bool{d.Dying, d.HVM, d.HAP, d.Shutdown, d.Paused, d.Blocked, d.Running} {
			if on {
				f |= 1 << bit
			}
		}
		r[2] = f
		r[3] = byte(d.ShutdownReason)
		copy(r[4:20], d.Handle[:])
		le.PutUint64(r[20:], d.TotPages)
		le.PutUint64(r[28:], d.MaxPages)
		le.PutUint64(r[36:], d.CPUTime)
		le.PutUint32(r[44:], d.OnlineVCPUs)
		le.PutUint32(r[48:], d.MaxVCPUID)
		le.PutUint32(r[52:], d.CPUPool)
	}
	return b
}

// decodeInfos parses encodeInfos' output; it rejects a length that is not
// a whole number of records and unknown flag bits.
func decodeInfos(b []byte) ([]xenctrl.DomainInfo, error) {
	if len(b)%infoRecordSize != 0 {
		return nil, fmt.Errorf("sim host: domain list of %d bytes is not a multiple of %d", len(b), infoRecordSize)
	}
	out := make([]xenctrl.DomainInfo, len(b)/infoRecordSize)
	for i := range out {
		r := b[i*infoRecordSize:]
		f := r[2]
		if f>>7 != 0 {
			return nil, fmt.Errorf("sim host: domain list record %d has unknown flags %#x", i, f)
		}
		d := &out[i]
		d.Domid = xenctrl.Domid(le.Uint16(r[0:]))
		d.Dying, d.HVM, d.HAP = f&infoDying != 0, f&infoHVM != 0, f&infoHAP != 0
		d.Shutdown, d.Paused = f&infoShutdown != 0, f&infoPaused != 0
		d.Blocked, d.Running = f&infoBlocked != 0, f&infoRunning != 0
		d.ShutdownReason = xenctrl.ShutdownReason(r[3])
		copy(d.Handle[:], r[4:20])
		d.TotPages = le.Uint64(r[20:])
		d.MaxPages = le.Uint64(r[28:])
		d.CPUTime = le.Uint64(r[36:])
		d.OnlineVCPUs = le.Uint32(r[44:])
		d.MaxVCPUID = le.Uint32(r[48:])
		d.CPUPool = le.Uint32(r[52:])
	}
	return out, nil
}
