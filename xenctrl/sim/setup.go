package sim

import (
	"context"
	"encoding/binary"
	"maps"
	"slices"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// The hypercalls a domain builder makes besides populating and mapping
// memory (memory.go) and checking page tables (pagetables.go).

// Limits of the calls below, from Xen 4.17.
const (
	// maxEvtchnPorts is the 2-level event channel ABI's limit on x86_64
	// (BITS_PER_EVTCHN_WORD squared).
	maxEvtchnPorts = 64 * 64
	// hvmNrParams is HVM_NR_PARAMS.
	hvmNrParams = 39
	// e820Max is E820MAX, the most entries XENMEM_set_memory_map takes.
	e820Max = 1024
	// simCPUID is the CPUID leaf 1 EAX the simulated host reports in HVM
	// save headers.
	simCPUID = 0x000806f8
)

// setupState is what a builder set up in a domain, besides its memory.
type setupState struct {
	tscMode       uint32
	pagingMempool uint64
	memoryMap     []xenctrl.E820Entry
	evtchns       map[uint32]xenctrl.Domid // unbound port → the domain allowed to bind it
	params        map[uint32]uint64
	hvmContext    map[[2]uint16][]byte // (record type, instance) → body, as loaded
	vcpuContext   map[uint32][]byte
	pinned        map[uint64]int // machine frame → page-table level, once validated
	pinnedL4      uint64
	hypercallPage uint64
}

// BuildState is what a builder set up in a domain, for tests to inspect
// (the hypervisor's side of it; guest memory is read with MapForeign).
type BuildState struct {
	TSCMode        uint32
	PagingMempool  uint64 // bytes
	MemoryMap      []xenctrl.E820Entry
	UnboundEvtchns map[uint32]xenctrl.Domid // port → remote domain
	HVMParams      map[uint32]uint64
	PinnedL4       uint64 // machine frame, 0 if none
	HypercallPage  uint64 // frame given to hypercall_init, 0 if none
	VCPUContexts   map[uint32][]byte
}

// BuildState reports what was set up in d.
func (h *Hypervisor) BuildState(d xenctrl.Domid) (BuildState, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup("build state", d)
	if err != nil {
		return BuildState{}, err
	}
	s := &dom.setup
	vcpus := map[uint32][]byte{}
	for i, c := range s.vcpuContext {
		vcpus[i] = slices.Clone(c)
	}
	return BuildState{
		TSCMode: s.tscMode, PagingMempool: s.pagingMempool, MemoryMap: slices.Clone(s.memoryMap),
		UnboundEvtchns: maps.Clone(s.evtchns), HVMParams: maps.Clone(s.params),
		PinnedL4: s.pinnedL4, HypercallPage: s.hypercallPage, VCPUContexts: vcpus,
	}, nil
}

// locked runs fn on domain d under h.mu, after checking ctx; fn returns
// an errno (0: success) reported as op's error.
func (h *Hypervisor) locked(ctx context.Context, op string, d xenctrl.Domid, fn func(dom *domain) syscall.Errno) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup(op, d)
	if err != nil {
		return err
	}
	if e := fn(dom); e != 0 {
		return errno(op, d, e)
	}
	return nil
}

// hvmOnly is the errno of an HVM-only call on a PV domain.
func hvmOnly(dom *domain) syscall.Errno {
	if !dom.hvm {
		return syscall.EINVAL
	}
	return 0
}

// SetTSCInfo is XEN_DOMCTL_settscinfo: modes default, always_emulate and
// native (never_emulate); anything else is EINVAL.
func (h *Hypervisor) SetTSCInfo(ctx context.Context, d xenctrl.Domid, mode uint32) error {
	return h.locked(ctx, "domctl settscinfo", d, func(dom *domain) syscall.Errno {
		if mode > xenctrl.TSCModeNeverEmulate {
			return syscall.EINVAL
		}
		dom.setup.tscMode = mode
		return 0
	})
}

// SetPagingMempoolSize is XEN_DOMCTL_set_paging_mempool_size; the size
// must be whole pages.
func (h *Hypervisor) SetPagingMempoolSize(ctx context.Context, d xenctrl.Domid, bytes uint64) error {
	return h.locked(ctx, "domctl set_paging_mempool_size", d, func(dom *domain) syscall.Errno {
		if bytes%xenctrl.PageSize != 0 {
			return syscall.EINVAL
		}
		dom.setup.pagingMempool = bytes
		return 0
	})
}

// SetMemoryMap is XENMEM_set_memory_map: 1 to E820MAX entries.
func (h *Hypervisor) SetMemoryMap(ctx context.Context, d xenctrl.Domid, entries []xenctrl.E820Entry) error {
	return h.locked(ctx, "memory_op set_memory_map", d, func(dom *domain) syscall.Errno {
		if len(entries) == 0 || len(entries) > e820Max {
			return syscall.EINVAL
		}
		dom.setup.memoryMap = slices.Clone(entries)
		return 0
	})
}

// AllocUnboundEvtchn is EVTCHNOP_alloc_unbound: the lowest free port of d
// (port 0 is never used), left unbound for remote to bind; ENOSPC when d
// has no port left.
func (h *Hypervisor) AllocUnboundEvtchn(ctx context.Context, d, remote xenctrl.Domid) (uint32, error) {
	var port uint32
	err := h.locked(ctx, "event_channel_op alloc_unbound", d, func(dom *domain) syscall.Errno {
		s := &dom.setup
		if s.evtchns == nil {
			s.evtchns = map[uint32]xenctrl.Domid{}
		}
		for p := uint32(1); p < maxEvtchnPorts; p++ {
			if _, used := s.evtchns[p]; !used {
				s.evtchns[p], port = remote, p
				return 0
			}
		}
		return syscall.ENOSPC
	})
	return port, err
}

// SetHVMParam is HVMOP_set_param: HVM domains only, index below
// HVM_NR_PARAMS.
func (h *Hypervisor) SetHVMParam(ctx context.Context, d xenctrl.Domid, idx uint32, v uint64) error {
	return h.locked(ctx, "hvm_op set_param", d, func(dom *domain) syscall.Errno {
		if e := hvmOnly(dom); e != 0 || idx >= hvmNrParams {
			return syscall.EINVAL
		}
		if dom.setup.params == nil {
			dom.setup.params = map[uint32]uint64{}
		}
		dom.setup.params[idx] = v
		return 0
	})
}

// SharedInfoFrame is the machine frame of d's shared info page
// (getdomaininfo's shared_info_frame), a Xen frame the guest and its
// toolstack may map.
func (h *Hypervisor) SharedInfoFrame(ctx context.Context, d xenctrl.Domid) (uint64, error) {
	return h.sharedFrame(ctx, "domctl getdomaininfo", d, func(g *guestMemory) *uint64 { return &g.sharedInfo })
}

// GrantTableFrame is the machine frame of frame 0 of d's grant table
// (GNTTABOP_setup_table).
func (h *Hypervisor) GrantTableFrame(ctx context.Context, d xenctrl.Domid) (uint64, error) {
	return h.sharedFrame(ctx, "grant_table_op setup_table", d, func(g *guestMemory) *uint64 { return &g.grantFrame })
}

// sharedFrame reports the Xen frame slot names, allocated on first use.
func (h *Hypervisor) sharedFrame(ctx context.Context, op string, d xenctrl.Domid, slot func(*guestMemory) *uint64) (uint64, error) {
	var mfn uint64
	err := h.locked(ctx, op, d, func(dom *domain) (e syscall.Errno) {
		mfn, e = h.xenFrame(dom, slot)
		return e
	})
	return mfn, err
}

// MapGrantTableFrame is XENMEM_add_to_physmap of grant table frame 0 at
// guest frame gfn of an HVM domain; RAM that was there is freed, as Xen
// does.
func (h *Hypervisor) MapGrantTableFrame(ctx context.Context, d xenctrl.Domid, gfn uint64) error {
	return h.locked(ctx, "memory_op add_to_physmap grant_table", d, func(dom *domain) syscall.Errno {
		if e := hvmOnly(dom); e != 0 {
			return e
		}
		mfn, e := h.xenFrame(dom, func(g *guestMemory) *uint64 { return &g.grantFrame })
		if e != 0 {
			return e
		}
		h.removeLocked(dom, gfn)
		dom.mem.xenPages[gfn] = mfn
		return 0
	})
}

// RemoveFromPhysmap is XENMEM_remove_from_physmap on an HVM domain: a Xen
// frame placed at gfn leaves the physmap, a RAM page is freed; ENOENT if
// nothing is there.
func (h *Hypervisor) RemoveFromPhysmap(ctx context.Context, d xenctrl.Domid, gfn uint64) error {
	return h.locked(ctx, "memory_op remove_from_physmap", d, func(dom *domain) syscall.Errno {
		if e := hvmOnly(dom); e != 0 {
			return e
		}
		if _, ok := dom.mem.xenPages[gfn]; ok {
			delete(dom.mem.xenPages, gfn)
			return 0
		}
		if !h.removeLocked(dom, gfn) {
			return syscall.ENOENT
		}
		return 0
	})
}

// HypercallInit is XEN_DOMCTL_hypercall_init: Xen writes its hypercall
// stubs into the guest's frame (a guest frame for HVM, a machine frame
// for PV). EINVAL if the domain has no such frame, EPERM if it is a page
// table.
func (h *Hypervisor) HypercallInit(ctx context.Context, d xenctrl.Domid, frame uint64) error {
	return h.locked(ctx, "domctl hypercall_init", d, func(dom *domain) syscall.Errno {
		mfn, ok := dom.machineFrame(frame)
		switch {
		case !ok:
			return syscall.EINVAL
		case dom.setup.pinned[mfn] != 0:
			return syscall.EPERM
		}
		h.frames().write(mfn, hypercallPage())
		dom.setup.hypercallPage = frame
		return 0
	})
}

// hypercallPage is what Xen writes for a 64-bit PV kernel: one 32-byte
// stub per hypercall, "push %rcx; push %r11; mov $nr, %eax; syscall;
// pop %r11; pop %rcx; ret".
func hypercallPage() []byte {
	p := make([]byte, xenctrl.PageSize)
	for nr := 0; nr < xenctrl.PageSize/32; nr++ {
		s := p[nr*32:]
		copy(s, []byte{0x51, 0x41, 0x53, 0xb8, byte(nr), 0, 0, 0, 0x0f, 0x05, 0x41, 0x5b, 0x59, 0xc3})
	}
	return p
}

// SetVCPUContext is XEN_DOMCTL_setvcpucontext: the vCPU must exist
// (SetMaxVCPUs) and the context be a whole vcpu_guest_context. For a PV
// domain Xen takes a root page-table reference on %cr3's frame, which
// validates the tables unless they are pinned already: a context whose
// tables fail that is EINVAL.
func (h *Hypervisor) SetVCPUContext(ctx context.Context, d xenctrl.Domid, vcpu uint32, vgc []byte) error {
	return h.locked(ctx, "domctl setvcpucontext", d, func(dom *domain) syscall.Errno {
		if d == 0 || !dom.vcpus || vcpu >= dom.maxVCPUs || len(vgc) != xenctrl.VCPUGuestContextSize {
			return syscall.EINVAL
		}
		if !dom.hvm && vcpuInitialised(dom, vcpu) {
			// An initialised PV vCPU keeps its page tables: only a
			// context with the same %cr3 is accepted (Xen 4.17's
			// arch_set_info_guest; EOPNOTSUPP otherwise).
			cur, _ := xenctrl.VCPUContextCR3Frame(currentVCPUContext(dom, vcpu))
			next, err := xenctrl.VCPUContextCR3Frame(vgc)
			if err != nil || next != cur {
				return syscall.EOPNOTSUPP
			}
		} else if !dom.hvm {
			boot, err := xenctrl.DecodePVVCPUContext(vgc)
			if err != nil {
				return syscall.EINVAL
			}
			if dom.setup.pinned[boot.L4MFN] != 4 {
				if e := h.validateL4Locked(dom, boot.L4MFN); e != 0 {
					return e
				}
			}
		}
		if dom.setup.vcpuContext == nil {
			dom.setup.vcpuContext = map[uint32][]byte{}
		}
		dom.setup.vcpuContext[vcpu] = slices.Clone(vgc)
		return 0
	})
}

// vcpuInitialised reports whether vCPU vcpu of dom has a context: one was
// loaded, or the simulated guest booted (its vCPUs came up).
func vcpuInitialised(dom *domain, vcpu uint32) bool {
	return dom.setup.vcpuContext[vcpu] != nil || dom.vcpusUp
}

// currentVCPUContext is the context of an initialised vCPU: the one loaded
// last, or for a guest booted without one (an empty domain's simulated
// guest) an all-zero context that is online (and, for PV, in kernel mode).
func currentVCPUContext(dom *domain, vcpu uint32) []byte {
	if c := dom.setup.vcpuContext[vcpu]; c != nil {
		return slices.Clone(c)
	}
	c := make([]byte, xenctrl.VCPUGuestContextSize)
	flags := uint64(vgcfOnline)
	if !dom.hvm {
		flags |= vgcfInKernel
	}
	binary.LittleEndian.PutUint64(c[vgcFlags:], flags)
	return c
}

// vcpu_guest_context.flags and its bits (VGCF_*).
const (
	vgcFlags     = 512
	vgcfInKernel = 1 << 2
	vgcfOnline   = 1 << 5
)

// GetVCPUContext is XEN_DOMCTL_getvcpucontext: EINVAL for a vCPU that does
// not exist (or any of dom0's: the simulator has no caller vCPU to tell
// apart), ENODATA for one not initialised yet.
func (h *Hypervisor) GetVCPUContext(ctx context.Context, d xenctrl.Domid, vcpu uint32) ([]byte, error) {
	var out []byte
	err := h.locked(ctx, "domctl getvcpucontext", d, func(dom *domain) syscall.Errno {
		switch {
		case d == 0 || !dom.vcpus || vcpu >= dom.maxVCPUs:
			return syscall.EINVAL
		case !vcpuInitialised(dom, vcpu):
			return syscall.ENODATA
		}
		out = currentVCPUContext(dom, vcpu)
		return 0
	})
	return out, err
}

// VCPUContext returns the context the simulator holds for vCPU vcpu of d
// (what GetVCPUContext reports), for tests.
func (h *Hypervisor) VCPUContext(d xenctrl.Domid, vcpu uint32) ([]byte, error) {
	return h.GetVCPUContext(context.Background(), d, vcpu)
}

// hvmRecordSize is the body size of each save record type the simulator
// keeps.
var hvmRecordSize = map[uint16]int{xenctrl.HVMSaveCodeCPU: xenctrl.HVMCPUSize, xenctrl.HVMSaveCodeMTRR: xenctrl.HVMMTRRSize}

// GetHVMContext is XEN_DOMCTL_gethvmcontext for an HVM domain: the save
// header, then a CPU record and an MTRR record per vCPU (once the vCPUs
// exist), as loaded by SetHVMContext or, before that, all zero; then END.
func (h *Hypervisor) GetHVMContext(ctx context.Context, d xenctrl.Domid) ([]byte, error) {
	var blob []byte
	err := h.locked(ctx, "domctl gethvmcontext", d, func(dom *domain) syscall.Errno {
		if e := hvmOnly(dom); e != 0 {
			return e
		}
		recs := []xenctrl.HVMRecord{{Code: xenctrl.HVMSaveCodeHeader, Body: xenctrl.EncodeHVMSaveHeader(xenctrl.HVMSaveHeader{
			Magic: xenctrl.HVMSaveMagic, Version: xenctrl.HVMSaveVersion, CPUID: simCPUID, GTSCKHz: 2_400_000})}}
		for _, code := range []uint16{xenctrl.HVMSaveCodeCPU, xenctrl.HVMSaveCodeMTRR} {
			for i := uint32(0); dom.vcpus && i < dom.maxVCPUs; i++ {
				body := dom.setup.hvmContext[[2]uint16{code, uint16(i)}]
				if body == nil {
					body = make([]byte, hvmRecordSize[code])
				}
				recs = append(recs, xenctrl.HVMRecord{Code: code, Instance: uint16(i), Body: slices.Clone(body)})
			}
		}
		blob = xenctrl.EncodeHVMContext(recs)
		return 0
	})
	return blob, err
}

// SetHVMContext is XEN_DOMCTL_sethvmcontext (hvm_load): the blob must
// start with a save header of this Xen's magic and version and end with
// END; every other record must be a CPU or MTRR record of the right size
// for an existing vCPU (the simulator knows no other types). A bad blob is
// EINVAL and changes nothing.
func (h *Hypervisor) SetHVMContext(ctx context.Context, d xenctrl.Domid, blob []byte) error {
	return h.locked(ctx, "domctl sethvmcontext", d, func(dom *domain) syscall.Errno {
		if e := hvmOnly(dom); e != 0 {
			return e
		}
		recs, err := xenctrl.ParseHVMContext(blob)
		if err != nil || len(recs) == 0 || recs[0].Code != xenctrl.HVMSaveCodeHeader {
			return syscall.EINVAL
		}
		hdr, err := xenctrl.DecodeHVMSaveHeader(recs[0].Body)
		if err != nil || hdr.Magic != xenctrl.HVMSaveMagic || hdr.Version != xenctrl.HVMSaveVersion {
			return syscall.EINVAL
		}
		for _, r := range recs[1:] {
			if size, known := hvmRecordSize[r.Code]; !known || len(r.Body) != size || !dom.vcpus || uint32(r.Instance) >= dom.maxVCPUs {
				return syscall.EINVAL
			}
		}
		if dom.setup.hvmContext == nil {
			dom.setup.hvmContext = map[[2]uint16][]byte{}
		}
		for _, r := range recs[1:] {
			dom.setup.hvmContext[[2]uint16{r.Code, r.Instance}] = slices.Clone(r.Body)
		}
		return 0
	})
}
