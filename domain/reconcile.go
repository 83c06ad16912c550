package domain

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// reconcile runs once in New, before any work is accepted: tasks left
// Pending or Running by a previous process become TaskInterrupted, and each
// VM's domain claims are settled with the domains the hypervisor reports
// (see reconcileVM). A domain no claim names is never touched, whatever its
// handle.
func (m *Manager) reconcile(ctx context.Context) error {
	now := time.Now().UTC()
	var tasks []taskPut
	for _, te := range m.tasks {
		if te.t.State.Done() {
			continue
		}
		was := te.t.State
		te.final = true
		tp := interrupted(te, now, fmt.Sprintf("xenopsd-ng stopped while the task was %s; the VM was reconciled with the hypervisor at restart", was))
		tasks = append(tasks, tp)
	}
	sort.Slice(tasks, func(i, j int) bool { return tasks[i].t.ID < tasks[j].t.ID })
	for len(tasks) > 0 {
		n := min(len(tasks), 256)
		if err := m.commit(ctx, txn{tasks: tasks[:n]}); err != nil {
			return err
		}
		tasks = tasks[n:]
	}

	doms, err := m.hv.ListDomains(ctx)
	if err != nil {
		return fmt.Errorf("list domains: %w", err)
	}
	byDomid := map[xenctrl.Domid]xenctrl.DomainInfo{}
	for _, d := range doms {
		if d.Domid != 0 {
			byDomid[d.Domid] = d
			m.rover = max(m.rover, d.Domid)
		}
	}
	ids := make([]string, 0, len(m.vms))
	ours := map[xenctrl.Domid]bool{}
	for id, e := range m.vms {
		ids = append(ids, id)
		for _, c := range e.rec.Domains {
			m.rover = max(m.rover, c.Domid)
			if d, ok := byDomid[c.Domid]; ok && d.Handle == e.handle {
				ours[c.Domid] = true
			}
		}
	}
	sort.Strings(ids)
	for _, id := range ids {
		if err := m.reconcileVM(ctx, m.vms[id], byDomid); err != nil {
			return fmt.Errorf("VM %s: %w", id, err)
		}
	}
	for _, d := range doms {
		if d.Domid == 0 || ours[d.Domid] {
			continue
		}
		if e := m.vms[handleUUID(d.Handle)]; e != nil {
			m.log.Warn("domain carries a VM's handle but no claim of it: not ours, left alone", "domid", d.Domid, "vm", e.id)
		} else {
			m.log.Info("domain not managed by xenopsd-ng left alone", "domid", d.Domid, "handle", handleUUID(d.Handle))
		}
	}
	return nil
}

// reconcileVM settles one VM's claims with the domains that exist: a
// claimed domain is the VM's only if it also carries the VM's handle.
//
//   - destroying: the destroy the previous process began is finished; for
//     the primary domain the VM becomes Halted without a Problem (whether
//     or not the domain was already gone, the destroy was ours).
//   - a migration target or restore domain is kept as long as it exists;
//     a claim whose domain does not exist is dropped.
//   - primary, creating: a start was interrupted; the half-built domain is
//     destroyed and the VM left Halted with a Problem.
//   - primary, live: the domain is adopted (power state from the
//     hypervisor; a guest that suspended itself stays suspended); if it is
//     gone the VM becomes Halted with a "vanished" Problem.
func (m *Manager) reconcileVM(ctx context.Context, e *vmEntry, doms map[xenctrl.Domid]xenctrl.DomainInfo) error {
	r := e.rec
	var kept []domainClaim
	var adopt *xenctrl.DomainInfo
	halt, problem := false, r.VM.Problem
	for _, c := range r.Domains {
		info, exists := doms[c.Domid]
		ours := exists && info.Handle == e.handle
		switch {
		case c.State == claimDestroying:
			m.log.Info("finishing a destroy begun before the restart", "vm", e.id, "domid", c.Domid, "role", c.Role)
			err := m.destroyClaimed(ctx, e.id, c)
			if c.Role == rolePrimary {
				halt, problem = true, ""
				if err != nil {
					problem = fmt.Sprintf("domain %d was not torn down cleanly: %v", c.Domid, err)
				}
			}
		case c.Role != rolePrimary && ours:
			m.log.Info("kept domain", "vm", e.id, "domid", c.Domid, "role", c.Role, "state", c.State)
			kept = append(kept, c)
		case c.Role != rolePrimary:
			m.log.Info("dropped the claim of a domain that does not exist", "vm", e.id, "domid", c.Domid, "role", c.Role)
		case c.State == claimCreating:
			halt, problem = true, "a start was interrupted by a daemon restart"
			if ours {
				problem += fmt.Sprintf("; half-built domain %d destroyed", c.Domid)
			}
			if err := m.destroyClaimed(ctx, e.id, c); err != nil {
				problem += fmt.Sprintf(" (cleanup: %v)", err)
			}
			m.log.Warn("cleaned up interrupted start", "vm", e.id, "domid", c.Domid, "existed", ours)
		case ours && !info.Dying:
			kept = append(kept, c)
			adopt = &info
		default:
			m.log.Warn("VM's domain vanished while xenopsd-ng was down", "vm", e.id, "domid", c.Domid)
			m.destroyClaimed(ctx, e.id, c) // removes what is left in xenstore
			halt, problem = true, fmt.Sprintf("domain %d vanished while xenopsd-ng was not running", c.Domid)
		}
	}
	if r.Building && !halt && adopt == nil {
		// A start interrupted before its claim was written: a record of
		// store schema 1. No domain is known to be ours; the private
		// subtree names the domid whose nodes were written.
		halt, problem = true, "a start was interrupted by a daemon restart"
		if err := m.removeLayout(ctx, e.id, m.orphanDomid(ctx, e.id)); err != nil {
			problem += fmt.Sprintf(" (cleanup: %v)", err)
		}
		m.log.Warn("cleaned up interrupted start; no domain claimed", "vm", e.id)
	}
	apply := func(r *vmRecord) {
		r.Domains = kept
		switch {
		case halt:
			r.Building, r.VM.Power, r.VM.Domid, r.Preserved, r.VM.DomainSuspended = false, Halted, 0, false, false
			r.VM.Problem = problem
		case adopt != nil:
			if adopt.Shutdown && adopt.ShutdownReason == xenctrl.ShutdownSuspend {
				r.Preserved, r.VM.DomainSuspended = true, true
			}
			r.VM.Power = Running
			if adopt.Paused || r.Preserved {
				r.VM.Power = Paused
			}
			r.VM.Domid = uint32(adopt.Domid)
		}
	}
	after := r
	apply(&after)
	if reflect.DeepEqual(after, r) {
		return nil
	}
	if adopt != nil {
		m.log.Info("adopted domain", "vm", e.id, "domid", adopt.Domid, "power", after.VM.Power, "suspended", after.VM.DomainSuspended)
	}
	return m.updateVM(ctx, e, func(r *vmRecord) error { apply(r); return nil })
}

// destroyClaimed destroys a claimed domain if it is still the VM's and
// removes its xenstore nodes: the VM's whole layout for a primary domain,
// only /local/domain/<domid> for another role.
func (m *Manager) destroyClaimed(ctx context.Context, id string, c domainClaim) error {
	if c.Role == rolePrimary {
		return m.teardown(ctx, id, c.Domid)
	}
	return m.destroyDomain(ctx, id, c.Domid)
}

// orphanDomid returns the domid recorded in the VM's private xenstore
// subtree if /local/domain/<domid> may be removed: no live domain of
// another VM has that domid now. 0 otherwise.
func (m *Manager) orphanDomid(ctx context.Context, id string) xenctrl.Domid {
	v, err := m.xs.Read(ctx, PrivatePath(id)+"/domid")
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(string(v), 10, 16)
	if err != nil || n == 0 || n >= uint64(xenctrl.DomidFirstReserved) {
		return 0
	}
	d := xenctrl.Domid(n)
	info, err := m.hv.DomainInfo(ctx, d)
	if err == nil && info.Handle != uuidHandle(id) {
		return 0 // reused by another domain: its tree is not ours
	}
	return d
}
