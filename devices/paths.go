package devices

import (
	"context"
	"fmt"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// Store is the part of *xenstore.Client the Plugger uses.
type Store interface {
	Read(ctx context.Context, path string) ([]byte, error)
	Write(ctx context.Context, path string, value []byte) error
	List(ctx context.Context, path string) ([]string, error)
	Remove(ctx context.Context, path string) error
	Watch(ctx context.Context, path, token string) (*xenstore.Watch, error)
	Transaction(ctx context.Context, fn func(tx *xenstore.Tx) error) error
}

// backendDomid is the domain that runs the backends: dom0 (no driver
// domains).
const backendDomid = 0

// BackendPath is the device's backend directory,
// /local/domain/0/backend/<kind>/<domid>/<devid>: written by us and the
// kernel's backend, readable by the guest.
func (r Record) BackendPath() string {
	return fmt.Sprintf("%s/%d", backendDomainDir(r.backendKind(), r.Domid), r.DevID)
}

// backendKind is the kind of the device's backend directory.
func (r Record) backendKind() Kind {
	if r.BackendKind != "" {
		return r.BackendKind
	}
	return r.Kind
}

// deviceModelDir is libxl's directory for domain domid's QEMU
// (/local/domain/0/device-model/<domid>): QEMU writes its state there,
// and we record its process (qemuNode), dom0-only.
func deviceModelDir(domid uint32) string {
	return fmt.Sprintf("/local/domain/%d/device-model/%d", backendDomid, domid)
}

// qemuNode records the QEMU serving the domain's qdisk backends, as
// QEMUProc.String: the durable record RemoveDomainDevices stops it from.
func qemuNode(domid uint32) string { return deviceModelDir(domid) + "/xenopsd-ng-qemu" }

// FrontendPath is the device's frontend directory,
// /local/domain/<domid>/device/<kind>/<devid>: owned by the guest, which may
// write anything in it.
func (r Record) FrontendPath() string {
	return fmt.Sprintf("/local/domain/%d/device/%s/%d", r.Domid, r.Kind, r.DevID)
}

// name is how errors and logs call the device: "vbd xvda (51712) of
// domain 5", "vif 0 of domain 5".
func (r Record) name() string {
	if r.Kind == KindVBD && r.Device != "" {
		return fmt.Sprintf("vbd %s (%d) of domain %d", r.Device, r.DevID, r.Domid)
	}
	return fmt.Sprintf("%s %d of domain %d", r.Kind, r.DevID, r.Domid)
}

// backendDomainDir holds all backends of one kind for one guest.
func backendDomainDir(kind Kind, domid uint32) string {
	return fmt.Sprintf("/local/domain/%d/backend/%s/%d", backendDomid, kind, domid)
}

// backendErrorPath is where the kernel's xenbus_dev_error reports a
// backend's failure (its "error/<nodename>" below the backend domain's
// home), as "<errno> <message>" in the node "error" inside it.
func backendErrorPath(r Record) string {
	return fmt.Sprintf("/local/domain/%d/error/backend/%s/%d/%d", backendDomid, r.backendKind(), r.Domid, r.DevID)
}

// backendPerms are libxl's backend permissions: owned by the backend
// domain, readable by the guest.
func backendPerms(domid uint32) []xenstore.Perm {
	return []xenstore.Perm{{Domid: backendDomid, Access: xenstore.AccessNone}, {Domid: domid, Access: xenstore.AccessRead}}
}

// frontendPerms are libxl's frontend permissions: owned by the guest (which
// writes its state and rings there), readable by the backend domain.
func frontendPerms(domid uint32) []xenstore.Perm {
	return []xenstore.Perm{{Domid: domid, Access: xenstore.AccessNone}, {Domid: backendDomid, Access: xenstore.AccessRead}}
}

// VIFName is the interface netback creates for a guest's NIC.
func VIFName(domid uint32, devid int) string { return fmt.Sprintf("vif%d.%d", domid, devid) }

var _ Store = (*xenstore.Client)(nil)
