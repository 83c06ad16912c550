package domain

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// xenOUI is the MAC prefix Xen's toolstacks generate NIC addresses in.
const xenOUI = "00:16:3e"

// fillMACsLocked gives every NIC of s without a MAC one: the MAC of the
// same NIC in prev (the VM's current spec, on update) if it is still free
// in s, else a random one in Xen's OUI (00:16:3e, as xl makes them: the
// fourth byte below 0x80) that no VM of this host uses. m.mu must be held.
//
// It costs nothing when every NIC has its MAC (most creates) and one pass
// over the host's NICs per MAC it tries otherwise.
func (m *Manager) fillMACsLocked(s *Spec, prev []NIC) {
	for i := range s.NICs {
		if s.NICs[i].MAC != "" {
			continue
		}
		if i < len(prev) && prev[i].MAC != "" && !m.macTakenLocked(prev[i].MAC, s) {
			s.NICs[i].MAC = prev[i].MAC
			continue
		}
		// 2^23 addresses; a host has at most a few thousand NICs.
		for {
			var b [3]byte
			rand.Read(b[:])
			mac := fmt.Sprintf("%s:%02x:%02x:%02x", xenOUI, b[0]&0x7f, b[1], b[2])
			if !m.macTakenLocked(mac, s) {
				s.NICs[i].MAC = mac
				break
			}
		}
	}
}

// macTakenLocked reports whether a NIC of s, or of another VM than s's,
// has mac. m.mu must be held.
func (m *Manager) macTakenLocked(mac string, s *Spec) bool {
	for _, n := range s.NICs {
		if n.MAC == mac {
			return true
		}
	}
	for _, e := range m.vms {
		for _, n := range e.rec.VM.Spec.NICs {
			if n.MAC == mac && e.id != s.UUID {
				return true
			}
		}
	}
	return false
}

// specFingerprint identifies the spec a CreateVM call asked for (normalized,
// before a uuid or MACs are generated), so that a retry under the same
// request_id can be told from a different request reusing it.
func specFingerprint(s Spec) string {
	c := cloneSpec(s)
	if len(c.Platform) == 0 {
		c.Platform = nil
	}
	if len(c.XenstoreData) == 0 {
		c.XenstoreData = nil
	}
	if len(c.Disks) == 0 {
		c.Disks = nil
	}
	if len(c.NICs) == 0 {
		c.NICs = nil
	}
	b, err := json.Marshal(c) // map keys are sorted: the encoding is canonical
	if err != nil {
		panic("domain: marshal spec: " + err.Error()) // plain data: cannot fail
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
