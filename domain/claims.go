package domain

import (
	"context"
	"errors"
	"fmt"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// domainRole says why a VM has a domain.
type domainRole string

const (
	// rolePrimary: the domain the VM runs in (VM.Domid once it is live).
	rolePrimary domainRole = "primary"
	// roleMigrationTarget: a domain receiving the VM's memory in a
	// migration to this host (from this host too, in a localhost
	// migration: then the VM has a primary domain as well).
	roleMigrationTarget domainRole = "migration-target"
	// roleRestore: a domain the VM's saved image is being restored into.
	roleRestore domainRole = "restore"
)

// claimState is where a claimed domain is in its life. Each state is
// persisted before the hypercall that leaves the previous one.
type claimState string

const (
	// claimCreating: persisted before XEN_DOMCTL_createdomain with the
	// claim's domid; the domain may or may not exist yet.
	claimCreating claimState = "creating"
	// claimLive: the domain exists and is the VM's.
	claimLive claimState = "live"
	// claimDestroying: persisted before XEN_DOMCTL_destroydomain; the
	// domain may or may not still exist.
	claimDestroying claimState = "destroying"
)

// domainClaim is the daemon's statement that a domid is (or is about to
// be, or was until a destroy) one of a VM's domains. Claims live in the VM
// record, so a claim changes in the same batch as the VM state it goes
// with. A domain is ours only if a claim names its domid and it carries
// the VM's handle: a domain with a VM's handle and no claim is someone
// else's (another toolstack's, or one we never created) and is left alone.
type domainClaim struct {
	Domid xenctrl.Domid `json:"domid"`
	Role  domainRole    `json:"role"`
	State claimState    `json:"state"`
}

// claim returns r's claim on d, or nil.
func (r *vmRecord) claim(d xenctrl.Domid) *domainClaim {
	for i := range r.Domains {
		if r.Domains[i].Domid == d {
			return &r.Domains[i]
		}
	}
	return nil
}

// setClaim adds or updates r's claim on d (on a copy of the claim list, so
// that records already committed are never changed in place).
func (r *vmRecord) setClaim(d xenctrl.Domid, role domainRole, state claimState) {
	out := make([]domainClaim, 0, len(r.Domains)+1)
	for _, c := range r.Domains {
		if c.Domid != d {
			out = append(out, c)
		}
	}
	r.Domains = append(out, domainClaim{Domid: d, Role: role, State: state})
}

// dropClaim removes r's claim on d, if any.
func (r *vmRecord) dropClaim(d xenctrl.Domid) {
	var out []domainClaim
	for _, c := range r.Domains {
		if c.Domid != d {
			out = append(out, c)
		}
	}
	r.Domains = out
}

// upgradeRecord reads a record written before claims existed (store schema
// 1): a Running or Paused VM with a domid claimed that domain, as primary
// and live. A record of schema 2 with that state always has the claim.
func upgradeRecord(r *vmRecord) {
	if r.Domains == nil && r.VM.Domid != 0 && (r.VM.Power == Running || r.VM.Power == Paused) {
		r.Domains = []domainClaim{{Domid: xenctrl.Domid(r.VM.Domid), Role: rolePrimary, State: claimLive}}
	}
}

// indexClaims updates the domid index from a VM's old record to its new
// one. m.mu must be held.
func (m *Manager) indexClaims(id string, old, cur []domainClaim) {
	for _, c := range old {
		if m.domids[c.Domid] == id {
			delete(m.domids, c.Domid)
		}
	}
	for _, c := range cur {
		m.domids[c.Domid] = id
	}
}

// errNoFreeDomid: every domid is claimed or used.
var errNoFreeDomid = &Error{Code: CodeResourceExhausted, Message: "no free domid: every domid below 0x7ff0 is claimed or used"}

// reserveDomid picks a domid for a new domain of VM id: the next after the
// last one picked (as Xen's own rover does, so that a domid is not reused
// at once and watchers of the old domain's paths do not see the new one)
// that no claim names and no domain, dying ones included, has. It is
// reserved in the index until a claim is committed for it or
// releaseDomid is called.
func (m *Manager) reserveDomid(ctx context.Context, id string) (xenctrl.Domid, error) {
	for tries := 0; tries < int(xenctrl.DomidFirstReserved); tries++ {
		d, ok := m.reserveNext(id)
		if !ok {
			break
		}
		_, err := m.hv.DomainInfo(ctx, d)
		if xenctrl.IsNoDomain(err) {
			return d, nil
		}
		m.releaseDomid(id, d)
		if err != nil {
			return 0, hvError(fmt.Sprintf("probe domid %d", d), err)
		}
	}
	return 0, errNoFreeDomid
}

// reserveNext moves the rover to the next domid no claim names (1 follows
// DomidFirstReserved-1) and reserves it for VM id.
func (m *Manager) reserveNext(id string) (xenctrl.Domid, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := 1; i < int(xenctrl.DomidFirstReserved); i++ {
		m.rover = m.rover%(xenctrl.DomidFirstReserved-1) + 1
		if _, claimed := m.domids[m.rover]; !claimed {
			m.domids[m.rover] = id
			return m.rover, true
		}
	}
	return 0, false
}

// releaseDomid undoes reserveDomid for a domid no committed claim names.
func (m *Manager) releaseDomid(id string, d xenctrl.Domid) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.vms[id]
	if m.domids[d] == id && (e == nil || e.rec.claim(d) == nil) {
		delete(m.domids, d)
	}
}

// errUnchanged aborts an updateVM that has nothing to write.
var errUnchanged = errors.New("record unchanged")

// updateClaims commits a change fn makes to e's claims alone. Clients do
// not see claims: the VM keeps its generation and no event is logged.
func (m *Manager) updateClaims(ctx context.Context, e *vmEntry, fn func(r *vmRecord) error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	m.mu.Lock()
	r := e.rec
	_, exists := m.vms[e.id]
	m.mu.Unlock()
	if !exists {
		return nil
	}
	if err := fn(&r); errors.Is(err, errUnchanged) {
		return nil
	} else if err != nil {
		return err
	}
	return m.commit(ctx, txn{quiet: true, vms: []vmRecord{r}})
}

// markDestroying persists, before the destroy hypercall, that the VM's
// domain d is being destroyed: a restart then finishes the destroy instead
// of taking the missing domain for one that vanished.
func (m *Manager) markDestroying(ctx context.Context, e *vmEntry, d xenctrl.Domid) error {
	return m.updateClaims(ctx, e, func(r *vmRecord) error {
		c := r.claim(d)
		if c == nil || c.State == claimDestroying {
			return errUnchanged
		}
		r.setClaim(d, c.Role, claimDestroying)
		return nil
	})
}
