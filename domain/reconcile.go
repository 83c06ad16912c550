package domain

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// reconcile runs once in New, before any work is accepted: tasks left
// Pending or Running by a previous process become TaskInterrupted, VMs are
// matched to the domains the hypervisor reports (by handle = VM UUID),
// half-built domains are destroyed and vanished ones recorded.
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
	byHandle := map[xenctrl.Handle][]xenctrl.DomainInfo{}
	for _, d := range doms {
		if d.Domid != 0 {
			byHandle[d.Handle] = append(byHandle[d.Handle], d)
		}
	}
	ids := make([]string, 0, len(m.vms))
	for id := range m.vms {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		e := m.vms[id]
		found := byHandle[uuidHandle(id)]
		delete(byHandle, uuidHandle(id))
		if err := m.reconcileVM(ctx, e, found); err != nil {
			return fmt.Errorf("VM %s: %w", id, err)
		}
	}
	for h, ds := range byHandle {
		for _, d := range ds {
			m.log.Info("domain not managed by xenopsd-ng left alone", "domid", d.Domid, "handle", handleUUID(h))
		}
	}
	return nil
}

func (m *Manager) reconcileVM(ctx context.Context, e *vmEntry, found []xenctrl.DomainInfo) error {
	r := e.rec
	var live []xenctrl.DomainInfo
	for _, d := range found {
		if !d.Dying {
			live = append(live, d)
		}
	}
	if r.Building {
		var notes []string
		for _, d := range found {
			if err := m.teardown(ctx, e.id, d.Domid); err != nil {
				notes = append(notes, err.Error())
			}
		}
		if err := m.removeLayout(ctx, e.id, m.orphanDomid(ctx, e.id)); err != nil {
			notes = append(notes, err.Error())
		}
		problem := "a start was interrupted by a daemon restart"
		if len(found) > 0 {
			problem += fmt.Sprintf("; half-built domain %d destroyed", found[0].Domid)
		}
		if len(notes) > 0 {
			problem += fmt.Sprintf(" (cleanup: %v)", notes)
		}
		m.log.Warn("cleaned up interrupted start", "vm", e.id, "domains", len(found))
		return m.updateVM(ctx, e, func(r *vmRecord) error {
			r.Building, r.VM.Power, r.VM.Domid, r.VM.Problem, r.Preserved = false, Halted, 0, problem, false
			return nil
		})
	}
	if len(live) == 0 {
		if r.VM.Power == Halted {
			return nil
		}
		d := r.VM.Domid
		m.log.Warn("VM's domain vanished while xenopsd-ng was down", "vm", e.id, "domid", d)
		m.removeLayout(ctx, e.id, xenctrl.Domid(d))
		return m.updateVM(ctx, e, func(r *vmRecord) error {
			r.VM.Power, r.VM.Domid, r.Preserved = Halted, 0, false
			r.VM.Problem = fmt.Sprintf("domain %d vanished while xenopsd-ng was not running", d)
			return nil
		})
	}
	// Adopt one domain: the recorded one if alive, else the lowest domid.
	pick := live[0]
	for _, d := range live {
		if uint32(d.Domid) == r.VM.Domid {
			pick = d
		}
	}
	for _, d := range live {
		if d.Domid != pick.Domid {
			// Two live domains with one VM's handle: keep one, never two.
			m.log.Error("duplicate domain for VM destroyed", "vm", e.id, "domid", d.Domid, "kept", pick.Domid)
			if err := m.hv.DestroyDomain(ctx, d.Domid); err != nil && !xenctrl.IsNoDomain(err) {
				return err
			}
		}
	}
	power := Running
	if pick.Paused || r.Preserved {
		power = Paused
	}
	if r.VM.Power == power && r.VM.Domid == uint32(pick.Domid) {
		return nil
	}
	problem := r.VM.Problem
	if r.VM.Power == Halted {
		problem = fmt.Sprintf("found live domain %d of this VM while its record said Halted; adopted", pick.Domid)
	}
	m.log.Info("adopted domain", "vm", e.id, "domid", pick.Domid, "power", power)
	return m.updateVM(ctx, e, func(r *vmRecord) error {
		r.VM.Power, r.VM.Domid, r.VM.Problem = power, uint32(pick.Domid), problem
		return nil
	})
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
