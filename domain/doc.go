// Package domain owns the VM lifecycle: specs, power states, the operations
// that move a VM between them, the tasks that track those operations and the
// event log that reports every change.
//
// Model: one owner per VM. Each VM has an ordered operation queue; operations
// on one VM run one at a time in submission order, different VMs run in
// parallel on a bounded worker pool. Every operation is validated before it
// touches the hypervisor, and every state change is persisted (package store)
// before it is reported. The hypervisor is reached only through
// xenctrl.Hypervisor, xenstore through the xenstore client.
package domain
