package simhost

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/simhost/v1"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// What both ends of the hypervisor socket share: how errors cross it and
// how the xenctrl types become messages and back. The protocol is
// xenopsd.simhost.v1 (api/xenopsd/simhost/v1); its handlers are in
// rpc_host.go, rpc_hypervisor.go, rpc_build.go and rpc_guest.go, one file per
// service.

// rpcError is err as a handler returns it. A hypervisor error becomes a
// status carrying a HypervisorError detail with its errno, then the extra
// details (what a call achieved before it failed); the code is only a hint
// for people reading logs (the client reads the detail). Handlers never
// answer Unavailable: the client takes that for a lost connection.
func rpcError(err error, extra ...protoadapt.MessageV1) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	if _, ok := status.FromError(err); ok {
		return err // already a status (bad request)
	}
	detail := &pb.HypervisorError{}
	var xe *xenctrl.Error
	var en syscall.Errno
	switch {
	case errors.As(err, &xe):
		detail = &pb.HypervisorError{Op: xe.Op, Domid: uint32(xe.Domid), Errno: uint32(xe.Errno)}
	case errors.As(err, &en):
		detail.Errno = uint32(en)
	default:
		return status.Error(codes.Unknown, err.Error())
	}
	st, derr := status.New(errnoCode(syscall.Errno(detail.Errno)), err.Error()).WithDetails(append([]protoadapt.MessageV1{detail}, extra...)...)
	if derr != nil {
		return status.Error(codes.Internal, fmt.Sprintf("%v (and its errno could not be attached: %v)", err, derr))
	}
	return st.Err()
}

func errnoCode(e syscall.Errno) codes.Code {
	switch e {
	case syscall.ESRCH, syscall.ENOENT:
		return codes.NotFound
	case syscall.ENOMEM, syscall.ENOSPC:
		return codes.ResourceExhausted
	case syscall.EINVAL, syscall.E2BIG:
		return codes.InvalidArgument
	case syscall.EBUSY, syscall.EEXIST:
		return codes.FailedPrecondition
	case syscall.EPERM, syscall.EACCES:
		return codes.PermissionDenied
	}
	return codes.Unknown
}

// errorFromRPC turns a status from the sim host back into the error the
// simulator returned: a *xenctrl.Error when it named an operation, an
// error matching its errno otherwise.
func errorFromRPC(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, d := range st.Details() {
		he, ok := d.(*pb.HypervisorError)
		if !ok {
			continue
		}
		if he.GetOp() != "" && he.GetErrno() != 0 {
			return &xenctrl.Error{Op: he.GetOp(), Domid: xenctrl.Domid(he.GetDomid()), Errno: syscall.Errno(he.GetErrno())}
		}
		return &remoteError{msg: st.Message(), errno: syscall.Errno(he.GetErrno())}
	}
	return &remoteError{msg: st.Message(), code: st.Code()}
}

// remoteError is a sim host error that is not a xenctrl.Error.
type remoteError struct {
	msg   string
	errno syscall.Errno // 0: none
	code  codes.Code    // the status code when there is no errno
}

func (e *remoteError) Error() string {
	if e.errno == 0 && e.code != codes.Unknown && e.code != codes.OK {
		return "sim host: " + e.code.String() + ": " + e.msg
	}
	return "sim host: " + e.msg
}

func (e *remoteError) Unwrap() error {
	if e.errno == 0 {
		return nil
	}
	return e.errno
}

// domidArg reads a domid field of a request: a domid_t is 16 bits, and a
// larger number is refused rather than cut to another domain's.
func domidArg(field string, v uint32) (xenctrl.Domid, error) {
	if v > 0xFFFF {
		return 0, status.Errorf(codes.InvalidArgument, "%s %d: a domid is 16 bits", field, v)
	}
	return xenctrl.Domid(v), nil
}

// reasonArg reads a SHUTDOWN_* code (8 bits in xenctrl).
func reasonArg(v uint32) (xenctrl.ShutdownReason, error) {
	if v > 0xFF {
		return 0, status.Errorf(codes.InvalidArgument, "reason %d: a shutdown code is 8 bits", v)
	}
	return xenctrl.ShutdownReason(v), nil
}

// DomainConfig crosses as one message holding every field of
// xenctrl.DomainConfig: a field added to the struct is one line in each
// function below (and one in the message); TestDomainConfigRoundTrip
// fails until it is.

func domainConfigToRPC(c xenctrl.DomainConfig) *pb.DomainConfig {
	return &pb.DomainConfig{
		Handle:            c.Handle[:],
		Flags:             uint32(c.Flags),
		MaxVcpus:          c.MaxVCPUs,
		MaxEvtchnPort:     c.MaxEvtchnPort,
		MaxGrantFrames:    c.MaxGrantFrames,
		MaxMaptrackFrames: c.MaxMaptrackFrames,
		EmulationFlags:    c.EmulationFlags,
		Domid:             uint32(c.Domid),
	}
}

func domainConfigFromRPC(m *pb.DomainConfig) (xenctrl.DomainConfig, error) {
	c := xenctrl.DomainConfig{
		Flags:             xenctrl.CreateFlags(m.GetFlags()),
		MaxVCPUs:          m.GetMaxVcpus(),
		MaxEvtchnPort:     m.GetMaxEvtchnPort(),
		MaxGrantFrames:    m.GetMaxGrantFrames(),
		MaxMaptrackFrames: m.GetMaxMaptrackFrames(),
		EmulationFlags:    m.GetEmulationFlags(),
	}
	if h := m.GetHandle(); len(h) != 0 && len(h) != len(c.Handle) {
		return c, status.Errorf(codes.InvalidArgument, "config.handle: %d bytes, want %d", len(h), len(c.Handle))
	}
	copy(c.Handle[:], m.GetHandle())
	d, err := domidArg("config.domid", m.GetDomid())
	c.Domid = d
	return c, err
}

func versionToRPC(v xenctrl.Version) *pb.VersionResponse {
	return &pb.VersionResponse{Major: int32(v.Major), Minor: int32(v.Minor), Extra: v.Extra}
}

func versionFromRPC(m *pb.VersionResponse) xenctrl.Version {
	return xenctrl.Version{Major: int(m.GetMajor()), Minor: int(m.GetMinor()), Extra: m.GetExtra()}
}

func physInfoToRPC(p xenctrl.PhysInfo) *pb.PhysInfoResponse {
	return &pb.PhysInfoResponse{
		ThreadsPerCore: p.ThreadsPerCore,
		CoresPerSocket: p.CoresPerSocket,
		NrCpus:         p.NrCPUs,
		MaxCpuId:       p.MaxCPUID,
		NrNodes:        p.NrNodes,
		CpuKhz:         p.CPUkHz,
		Capabilities:   p.Capabilities,
		TotalPages:     p.TotalPages,
		FreePages:      p.FreePages,
		ScrubPages:     p.ScrubPages,
	}
}

func physInfoFromRPC(m *pb.PhysInfoResponse) xenctrl.PhysInfo {
	return xenctrl.PhysInfo{
		ThreadsPerCore: m.GetThreadsPerCore(),
		CoresPerSocket: m.GetCoresPerSocket(),
		NrCPUs:         m.GetNrCpus(),
		MaxCPUID:       m.GetMaxCpuId(),
		NrNodes:        m.GetNrNodes(),
		CPUkHz:         m.GetCpuKhz(),
		Capabilities:   m.GetCapabilities(),
		TotalPages:     m.GetTotalPages(),
		FreePages:      m.GetFreePages(),
		ScrubPages:     m.GetScrubPages(),
	}
}
