package stream

import "fmt"

// sequence enforces which records a stream may carry and in what order,
// for the reader and the writer alike. The spec's rules:
//
//   - the domain type decides the records: X86_PV_* and SHARED_INFO only
//     in x86 PV streams, HVM_CONTEXT and HVM_PARAMS only in x86 HVM ones;
//   - version 3 records (STATIC_DATA_END, X86_CPUID_POLICY, X86_MSR_POLICY)
//     only in version 3 streams, where STATIC_DATA_END comes exactly once,
//     after X86_PV_INFO and the CPU policy and before anything else;
//   - PV: X86_PV_INFO, then X86_PV_P2M_FRAMES (once each), then PAGE_DATA,
//     then the vCPU records (no PAGE_DATA after a vCPU record);
//   - END last.
//
// The spec also says that HVM_PARAMS precedes HVM_CONTEXT, but Xen (4.17
// and later) writes HVM_CONTEXT first and its restore applies both at
// the end of the stream: no order is asked of them here.
type sequence struct {
	version   uint32
	domain    DomainType
	staticEnd bool
	pvInfo    bool
	p2mFrames bool
	vcpuSeen  bool
	ended     bool
}

// next checks that a record of type t may come now, and records it.
func (s *sequence) next(t RecordType) error {
	if s.ended {
		return fmt.Errorf("%v after END", t)
	}
	if err := s.allowed(t); err != nil {
		return err
	}
	if s.version >= Version3 {
		if err := s.staticOrder(t); err != nil {
			return err
		}
	}
	if err := s.typeOrder(t); err != nil {
		return err
	}
	switch t {
	case TypeEnd:
		s.ended = true
	case TypeStaticDataEnd:
		s.staticEnd = true
	case TypeX86PVInfo:
		s.pvInfo = true
	case TypeX86PVP2MFrames:
		s.p2mFrames = true
	case TypeX86PVVCPUBasic, TypeX86PVVCPUExtended, TypeX86PVVCPUXSave, TypeX86PVVCPUMSRs:
		s.vcpuSeen = true
	}
	return nil
}

// allowed checks the record type against the domain type and version.
func (s *sequence) allowed(t RecordType) error {
	switch t {
	case TypeX86PVInfo, TypeX86PVP2MFrames, TypeX86PVVCPUBasic, TypeX86PVVCPUExtended,
		TypeX86PVVCPUXSave, TypeX86PVVCPUMSRs, TypeSharedInfo:
		if s.domain != DomainX86PV {
			return fmt.Errorf("%v in an %v stream", t, s.domain)
		}
	case TypeHVMContext, TypeHVMParams:
		if s.domain != DomainX86HVM {
			return fmt.Errorf("%v in an %v stream", t, s.domain)
		}
	case TypeStaticDataEnd, TypeX86CPUIDPolicy, TypeX86MSRPolicy:
		if s.version < Version3 {
			return fmt.Errorf("%v in a version %d stream (it needs version 3)", t, s.version)
		}
	}
	return nil
}

// isStatic reports whether a record belongs before STATIC_DATA_END.
func isStatic(t RecordType) bool {
	return t == TypeX86PVInfo || t == TypeX86CPUIDPolicy || t == TypeX86MSRPolicy
}

func (s *sequence) staticOrder(t RecordType) error {
	switch {
	case t == TypeStaticDataEnd && s.staticEnd:
		return fmt.Errorf("a second STATIC_DATA_END")
	case t == TypeStaticDataEnd && s.domain == DomainX86PV && !s.pvInfo:
		return fmt.Errorf("STATIC_DATA_END before X86_PV_INFO")
	case isStatic(t) && s.staticEnd:
		return fmt.Errorf("%v after STATIC_DATA_END", t)
	case !isStatic(t) && t != TypeStaticDataEnd && !s.staticEnd:
		return fmt.Errorf("%v before STATIC_DATA_END", t)
	}
	return nil
}

func (s *sequence) typeOrder(t RecordType) error {
	switch t {
	case TypeX86PVInfo:
		if s.pvInfo {
			return fmt.Errorf("a second X86_PV_INFO")
		}
	case TypeX86PVP2MFrames:
		if !s.pvInfo {
			return fmt.Errorf("X86_PV_P2M_FRAMES before X86_PV_INFO")
		}
		if s.p2mFrames {
			return fmt.Errorf("a second X86_PV_P2M_FRAMES")
		}
	case TypePageData:
		if s.domain == DomainX86PV && !s.p2mFrames {
			return fmt.Errorf("PAGE_DATA before X86_PV_P2M_FRAMES")
		}
		if s.vcpuSeen {
			return fmt.Errorf("PAGE_DATA after the vCPU records")
		}
	case TypeX86PVVCPUBasic, TypeX86PVVCPUExtended, TypeX86PVVCPUXSave, TypeX86PVVCPUMSRs:
		if !s.p2mFrames {
			return fmt.Errorf("%v before X86_PV_P2M_FRAMES", t)
		}
	}
	return nil
}
