package simhost

import (
	"context"
	"errors"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// The hypervisor socket speaks net/rpc with gob encoding. Every method of
// the "Hypervisor" service takes an Args and fills a Reply; hypervisor
// errors travel inside Reply.Err (not as net/rpc's string errors) so that
// the client can rebuild a *xenctrl.Error with its errno.

// serviceName is the net/rpc service name.
const serviceName = "Hypervisor"

// Args carries the arguments of every call; each method reads its fields.
type Args struct {
	Domid     xenctrl.Domid
	Config    xenctrl.DomainConfig
	KiB       uint64
	VCPUs     uint32
	Pages     uint64
	Reason    xenctrl.ShutdownReason
	Behaviour sim.GuestBehaviour
}

// Reply carries every result; gob sends only the fields that are set.
type Reply struct {
	Err     *WireError
	Domid   xenctrl.Domid
	List    []byte // encodeInfos records
	Version xenctrl.Version
	Phys    xenctrl.PhysInfo
	Hello   Hello
}

// Hello identifies the sim host process answering on a socket.
type Hello struct {
	PID           int
	BootID        string // random per Run: changes when the host "reboots"
	XenstoredPath string
}

// WireError is an error as it crosses the socket.
type WireError struct {
	Op    string
	Domid xenctrl.Domid
	Errno syscall.Errno // 0: not a hypervisor error
	Msg   string
}

func toWire(err error) *WireError {
	if err == nil {
		return nil
	}
	var xe *xenctrl.Error
	if errors.As(err, &xe) {
		return &WireError{Op: xe.Op, Domid: xe.Domid, Errno: xe.Errno, Msg: err.Error()}
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return &WireError{Errno: en, Msg: err.Error()}
	}
	return &WireError{Msg: err.Error()}
}

func (w *WireError) err() error {
	switch {
	case w == nil:
		return nil
	case w.Op != "" && w.Errno != 0:
		return &xenctrl.Error{Op: w.Op, Domid: w.Domid, Errno: w.Errno}
	case w.Errno != 0:
		return &remoteError{msg: w.Msg, errno: w.Errno}
	}
	return &remoteError{msg: w.Msg}
}

// remoteError is a non-hypervisor error reported by the sim host.
type remoteError struct {
	msg   string
	errno syscall.Errno
}

func (e *remoteError) Error() string { return "sim host: " + e.msg }

func (e *remoteError) Unwrap() error {
	if e.errno == 0 {
		return nil
	}
	return e.errno
}

// service is the server side of the hypervisor socket.
type service struct {
	hv    *sim.Hypervisor
	hello Hello
	stop  func()
	// onGuestShutdown, if set, runs before a GuestShutdown call is carried out.
	onGuestShutdown func(xenctrl.Domid, xenctrl.ShutdownReason)
}

func (s *service) Hello(_ Args, r *Reply) error { r.Hello = s.hello; return nil }

func (s *service) Stop(_ Args, r *Reply) error { s.stop(); return nil }

func (s *service) Version(_ Args, r *Reply) (err error) {
	r.Version, err = s.hv.Version(context.Background())
	r.Err = toWire(err)
	return nil
}

func (s *service) PhysInfo(_ Args, r *Reply) (err error) {
	r.Phys, err = s.hv.PhysInfo(context.Background())
	r.Err = toWire(err)
	return nil
}

func (s *service) CreateDomain(a Args, r *Reply) (err error) {
	r.Domid, err = s.hv.CreateDomain(context.Background(), a.Config)
	r.Err = toWire(err)
	return nil
}

func (s *service) SetMaxMem(a Args, r *Reply) error {
	r.Err = toWire(s.hv.SetMaxMem(context.Background(), a.Domid, a.KiB))
	return nil
}

func (s *service) SetMaxVCPUs(a Args, r *Reply) error {
	r.Err = toWire(s.hv.SetMaxVCPUs(context.Background(), a.Domid, a.VCPUs))
	return nil
}

func (s *service) PopulatePhysmap(a Args, r *Reply) error {
	r.Err = toWire(s.hv.PopulatePhysmap(context.Background(), a.Domid, a.Pages))
	return nil
}

func (s *service) PauseDomain(a Args, r *Reply) error {
	r.Err = toWire(s.hv.PauseDomain(context.Background(), a.Domid))
	return nil
}

func (s *service) UnpauseDomain(a Args, r *Reply) error {
	r.Err = toWire(s.hv.UnpauseDomain(context.Background(), a.Domid))
	return nil
}

func (s *service) ShutdownDomain(a Args, r *Reply) error {
	r.Err = toWire(s.hv.ShutdownDomain(context.Background(), a.Domid, a.Reason))
	return nil
}

func (s *service) DestroyDomain(a Args, r *Reply) error {
	r.Err = toWire(s.hv.DestroyDomain(context.Background(), a.Domid))
	return nil
}

func (s *service) DomainInfo(a Args, r *Reply) error {
	di, err := s.hv.DomainInfo(context.Background(), a.Domid)
	if err == nil {
		r.List = encodeInfos([]xenctrl.DomainInfo{di})
	}
	r.Err = toWire(err)
	return nil
}

func (s *service) ListDomains(_ Args, r *Reply) error {
	ds, err := s.hv.ListDomains(context.Background())
	r.List, r.Err = encodeInfos(ds), toWire(err)
	return nil
}

func (s *service) GuestShutdown(a Args, r *Reply) error {
	if s.onGuestShutdown != nil {
		s.onGuestShutdown(a.Domid, a.Reason)
	}
	r.Err = toWire(s.hv.GuestShutdown(context.Background(), a.Domid, a.Reason))
	return nil
}

func (s *service) SetGuestBehaviour(a Args, r *Reply) error {
	r.Err = toWire(s.hv.SetGuestBehaviour(context.Background(), a.Domid, a.Behaviour))
	return nil
}
