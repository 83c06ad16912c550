// Package builder builds guest domains: it turns an empty, paused domain
// (created by the caller with the right flags) into one that boots its
// kernel when unpaused. A Builder is made for one hypervisor, anything
// that implements Hypervisor: real Xen (*xenctrl.Xen) or the simulator
// (*sim.Hypervisor), which checks what a build does as Xen would. It
// implements domain.Builder.
//
// Every guest type goes through one skeleton (builder.go): load the kernel
// and initrd, plan the layout, set the limits (vCPUs, max_mem, memory
// map), populate, write guest memory, set up the rings and their event
// channels, seed the grants, set vCPU 0. What differs per type (pvh.go,
// pv.go) fills in the steps; guest memory is package guestmem, which also
// says which frame numbers are PFNs and which MFNs.
//
// PVH (an HVM container with hardware-assisted paging, XEN_DOMCTL_CDF_hvm |
// XEN_DOMCTL_CDF_hap, emulation flags XEN_X86_EMU_LAPIC) is supported: the
// guest's RAM is populated from physical address 0 up to libxl's MMIO hole
// at 0xF0000000 and, for the rest, from 4 GiB on; the kernel's loadable
// segments are copied to their physical addresses, the initrd follows the
// kernel, and one page after it holds struct hvm_start_info (version 1)
// with the module list, the memory map and the command line. Two "special"
// pages just below 0xff000000 (the same frames libxenguest uses) carry the
// xenstore and console rings; their frames and event channels (allocated
// unbound for dom0) go into HVM parameters, and grant references 0 and 1
// are seeded so xenconsoled and xenstored can map them. vCPU 0 starts at
// XEN_ELFNOTE_PHYS32_ENTRY in flat 32-bit protected mode, paging off, with
// %ebx pointing at the start info (docs/misc/pvh.pandoc). The kernel may
// be ELF64 or, like GRUB's i386-xen_pvh image, ELF32: either way its
// segments go to their physical addresses and it starts at that note. One page of ACPI
// tables at 0xfc000000 (acpi.go: RSDP, XSDT, a hardware-reduced FADT, an
// empty DSDT and a MADT with a local APIC per vCPU) is what lets Linux find
// its local APICs: without it the guest runs without a clock event device
// and with one vCPU.
//
// PV (x86_64, 4-level paging, so ELF64 kernels only: a 32-bit one is
// refused naming its ELF class; see pv.go and pv_layout.go) follows
// libxenguest's layout: all RAM is populated and recorded in a p2m array,
// the kernel is loaded at its virtual base, followed by the initrd, the
// p2m, start_info, the xenstore and console pages, the initial page tables
// and a boot stack, all in one initial mapping; the L4 is pinned on the
// guest's behalf, the ring grants are seeded and vCPU 0 starts at
// XEN_ELFNOTE_ENTRY with %rsi pointing at start_info. A kernel that asks
// for it (Linux does) gets the p2m at its XEN_ELFNOTE_INIT_P2M address and
// the initrd by frame number (XEN_ELFNOTE_MOD_START_PFN), both in frames
// past the initial mapping, so that the guest can unmap all of that
// mapping it does not need.
//
// The kernel and initrd are untrusted: package kernel parses them, and
// every address the image asks for is checked against the guest's memory
// before anything is written.
//
// What the builder does not do: create or destroy the domain, write
// xenstore, or introduce the domain to xenstored (the caller does that
// with the BuildResult). On error the domain is left as it is, for the
// caller to destroy.
//
// Not yet: PoD (memory_dynamic_max below static_max is populated to
// dynamic_max), vCPU hot-plug for PVH (the DSDT has no processor objects).
package builder
