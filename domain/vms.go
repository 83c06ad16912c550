package domain

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// hostMemory returns the host's total memory in bytes.
func (m *Manager) hostMemory(ctx context.Context) (uint64, error) {
	p, err := m.hv.PhysInfo(ctx)
	if err != nil {
		return 0, hvError("read host physinfo", err)
	}
	return p.TotalPages * 4096, nil
}

// CreateVM records a new, Halted VM. With a non-empty requestID the call is
// idempotent: repeating it with the same spec returns the VM the first call
// created (even across restarts) instead of creating another; reusing it
// with a different spec is AlreadyExists naming request_id. An empty
// spec.UUID gets a generated one, and so does every NIC without a MAC
// (recorded in the spec, so it stays). Defaults: see normalize.
func (m *Manager) CreateVM(ctx context.Context, spec Spec, requestID string) (VM, error) {
	if err := validateRequestID(requestID); err != nil {
		return VM{}, err
	}
	spec = normalize(cloneSpec(spec))
	host, err := m.hostMemory(ctx)
	if err != nil {
		return VM{}, err
	}
	if err := validateSpec(spec, host); err != nil {
		return VM{}, err
	}
	fingerprint := specFingerprint(spec)
	m.mu.Lock()
	for {
		if m.closing {
			m.mu.Unlock()
			return VM{}, errClosing()
		}
		if requestID == "" {
			break
		}
		if id, ok := m.reqs[requestID]; ok {
			if e := m.vms[id]; e != nil {
				rec := e.rec
				m.mu.Unlock()
				if rec.RequestSpec != "" && rec.RequestSpec != fingerprint {
					return VM{}, &Error{Code: CodeAlreadyExists, Field: "request_id", Message: "request_id " + quote(requestID) +
						" already created VM " + rec.VM.ID + " from a different spec; a retry must repeat the spec, a new VM needs a new request_id"}
				}
				return rec.VM, nil
			}
		}
		ch, busy := m.inflight[requestID]
		if !busy {
			break
		}
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return VM{}, ctxError(ctx.Err())
		}
		m.mu.Lock()
	}
	if spec.UUID == "" {
		for spec.UUID == "" || m.vms[spec.UUID] != nil || m.pending[spec.UUID] {
			spec.UUID = newUUID()
		}
	}
	if m.vms[spec.UUID] != nil || m.pending[spec.UUID] {
		m.mu.Unlock()
		return VM{}, &Error{Code: CodeAlreadyExists, Field: "spec.uuid", Message: "a VM with uuid " + spec.UUID + " already exists"}
	}
	if _, taken := m.names[spec.Name]; taken {
		m.mu.Unlock()
		return VM{}, &Error{Code: CodeAlreadyExists, Field: "spec.name", Message: "a VM named " + spec.Name + " already exists"}
	}
	if other, taken := m.names[spec.UUID]; taken { // only records older than the rule that names are not UUIDs
		m.mu.Unlock()
		return VM{}, &Error{Code: CodeAlreadyExists, Field: "spec.uuid", Message: "VM " + other + " is named " + spec.UUID + "; the uuid would be ambiguous"}
	}
	m.fillMACsLocked(&spec, nil)
	m.names[spec.Name] = spec.UUID
	m.pending[spec.UUID] = true
	var done chan struct{}
	if requestID != "" {
		done = make(chan struct{})
		m.inflight[requestID] = done
	}
	m.mu.Unlock()

	now := time.Now().UTC()
	rec := vmRecord{VM: VM{ID: spec.UUID, Spec: spec, Power: Halted, CreatedAt: now, UpdatedAt: now, Generation: 1}, RequestID: requestID}
	if requestID != "" {
		rec.RequestSpec = fingerprint
	}
	t := txn{vms: []vmRecord{rec}}
	if requestID != "" {
		t.reqs = map[string]string{requestID: spec.UUID}
	}
	err = m.commit(ctx, t)
	m.mu.Lock()
	delete(m.pending, spec.UUID)
	if done != nil {
		delete(m.inflight, requestID)
		close(done)
	}
	if err != nil && m.names[spec.Name] == spec.UUID && m.vms[spec.UUID] == nil {
		delete(m.names, spec.Name)
	}
	m.mu.Unlock()
	if err != nil {
		return VM{}, err
	}
	m.log.Info("VM created", "vm", spec.UUID, "name", spec.Name)
	return rec.VM, nil
}

// resolveLocked finds a VM by reference: a canonical UUID is only ever an
// id, anything else only ever a name (names cannot look like UUIDs), so a
// reference can never pick a VM other than the one it names. m.mu must be
// held.
func (m *Manager) resolveLocked(ref string) (*vmEntry, error) {
	if ref == "" {
		return nil, InvalidField("id", "must name a VM by uuid or name")
	}
	if ValidUUID(ref) {
		if e := m.vms[ref]; e != nil && !e.deleting {
			return e, nil
		}
		return nil, &Error{Code: CodeNotFound, Field: "id", Message: "no VM with id " + ref}
	}
	if id, ok := m.names[ref]; ok {
		if e := m.vms[id]; e != nil && !e.deleting {
			return e, nil
		}
	}
	return nil, &Error{Code: CodeNotFound, Field: "id", Message: "no VM named " + quote(ref)}
}

func (m *Manager) resolve(ref string) (*vmEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.resolveLocked(ref)
}

// GetVM returns a VM by id (uuid) or name.
func (m *Manager) GetVM(ctx context.Context, ref string) (VM, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, err := m.resolveLocked(ref)
	if err != nil {
		return VM{}, err
	}
	return e.rec.VM, nil
}

// ListVMs returns every VM, sorted by name, and the event revision the list
// is consistent with: a Watch from that revision misses nothing.
func (m *Manager) ListVMs(ctx context.Context) ([]VM, uint64, error) {
	m.mu.Lock()
	out := make([]VM, 0, len(m.vms))
	for _, e := range m.vms {
		out = append(out, e.rec.VM)
	}
	rev := m.rev
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Spec.Name < out[j].Spec.Name })
	return out, rev, nil
}

// UpdateVM replaces a VM's spec. spec.UUID must be empty or the VM's id.
// The change applies from the VM's next start; a running domain keeps its
// configuration.
func (m *Manager) UpdateVM(ctx context.Context, ref string, spec Spec) (VM, error) {
	e, err := m.resolve(ref)
	if err != nil {
		return VM{}, err
	}
	if spec.UUID != "" && spec.UUID != e.id {
		return VM{}, InvalidField("spec.uuid", "%q differs from the VM's id %s; a VM's uuid cannot change", spec.UUID, e.id)
	}
	spec.UUID = e.id
	spec = normalize(cloneSpec(spec))
	host, err := m.hostMemory(ctx)
	if err != nil {
		return VM{}, err
	}
	if err := validateSpec(spec, host); err != nil {
		return VM{}, err
	}
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return VM{}, errClosing()
	}
	if owner, taken := m.names[spec.Name]; taken && owner != e.id {
		m.mu.Unlock()
		return VM{}, &Error{Code: CodeAlreadyExists, Field: "spec.name", Message: "a VM named " + spec.Name + " already exists"}
	}
	m.fillMACsLocked(&spec, e.rec.VM.Spec.NICs)
	m.names[spec.Name] = e.id // reserve; commit's apply settles the index
	m.mu.Unlock()
	var out VM
	err = m.updateVM(ctx, e, func(r *vmRecord) error {
		r.VM.Spec = spec
		out = r.VM
		return nil
	})
	if err != nil {
		m.mu.Lock()
		if m.names[spec.Name] == e.id && e.rec.VM.Spec.Name != spec.Name {
			delete(m.names, spec.Name)
		}
		m.mu.Unlock()
		return VM{}, err
	}
	m.mu.Lock()
	if _, gone := m.vms[e.id]; !gone {
		m.mu.Unlock()
		return VM{}, &Error{Code: CodeNotFound, Field: "id", Message: "VM " + e.id + " was deleted meanwhile"}
	}
	out = e.rec.VM
	m.mu.Unlock()
	return out, nil
}

// DeleteVM removes a Halted VM with no queued operations.
func (m *Manager) DeleteVM(ctx context.Context, ref string) error {
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return errClosing()
	}
	e, err := m.resolveLocked(ref)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	m.mu.Unlock()
	e.submitMu.Lock()
	defer e.submitMu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	m.mu.Lock()
	switch {
	case m.vms[e.id] != e || e.deleting:
		m.mu.Unlock()
		return &Error{Code: CodeNotFound, Field: "id", Message: "no VM with id or name " + quote(ref)}
	case e.rec.Building:
		m.mu.Unlock()
		return &Error{Code: CodeFailedPrecondition, Message: "VM " + e.id + " is being built (a start or restart is in progress); only a Halted VM can be deleted"}
	case e.rec.VM.Power != Halted:
		m.mu.Unlock()
		return &Error{Code: CodeFailedPrecondition, Message: "VM " + e.id + " is " + e.rec.VM.Power.String() + "; only a Halted VM can be deleted"}
	case len(e.rec.Domains) > 0:
		m.mu.Unlock()
		return &Error{Code: CodeFailedPrecondition, Message: fmt.Sprintf("VM %s still has domain %d (%s, %s); only a VM without domains can be deleted", e.id, e.rec.Domains[0].Domid, e.rec.Domains[0].Role, e.rec.Domains[0].State)}
	case userOps(e.queue) > 0 || (e.running != nil && (e.running.task == nil || !e.running.task.final)):
		m.mu.Unlock()
		return &Error{Code: CodeFailedPrecondition, Message: "VM " + e.id + " has operations queued or running"}
	}
	e.deleting = true
	e.queue = nil // only guest-event checks, moot for a Halted VM
	rec := e.rec
	m.mu.Unlock()
	t := txn{delVMs: []string{e.id}}
	if rec.RequestID != "" {
		t.delReq = []string{rec.RequestID}
	}
	if err := m.commit(ctx, t); err != nil {
		m.mu.Lock()
		e.deleting = false
		m.mu.Unlock()
		return err
	}
	m.log.Info("VM deleted", "vm", e.id)
	return nil
}

func quote(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return "\"" + s + "\""
}

// userOps counts the queued operations that have a task.
func userOps(q []*op) int {
	n := 0
	for _, o := range q {
		if o.task != nil {
			n++
		}
	}
	return n
}
