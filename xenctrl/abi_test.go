package xenctrl

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// The numbers in these tests are copied from offsets dumped from Xen's
// public headers (shared/xen-abi/abidump-4.17.7.txt ... abidump-4.20.0.txt,
// physinfo-*.txt, privcmd_abi.txt): each layout is checked by writing
// distinct values through the encoder and reading them at the dumped
// offsets, or the reverse for decoders.

func TestABIForVersions(t *testing.T) {
	for _, c := range []struct {
		major, minor   int
		domctl, sysctl uint32
		createSize     int
	}{
		{4, 17, 0x15, 0x15, 64},
		{4, 18, 0x16, 0x15, 64},
		{4, 19, 0x17, 0x15, 68},
		{4, 20, 0x17, 0x15, 68},
	} {
		a, err := abiFor(c.major, c.minor)
		if err != nil {
			t.Fatalf("abiFor(%d.%d): %v", c.major, c.minor, err)
		}
		if a.domctlVersion != c.domctl || a.sysctlVersion != c.sysctl || a.createSize != c.createSize {
			t.Errorf("%d.%d: domctl %#x sysctl %#x createdomain %d B, want %#x %#x %d", c.major, c.minor,
				a.domctlVersion, a.sysctlVersion, a.createSize, c.domctl, c.sysctl, c.createSize)
		}
		if a.cdArch+8 != a.createSize {
			t.Errorf("%d.%d: arch config @%d does not end the %d-byte struct", c.major, c.minor, a.cdArch, a.createSize)
		}
	}
	for _, v := range [][2]int{{4, 16}, {4, 21}, {5, 0}} {
		_, err := abiFor(v[0], v[1])
		if err == nil || !strings.Contains(err.Error(), "not supported") {
			t.Errorf("abiFor(%d.%d) = %v, want a not-supported error", v[0], v[1], err)
		} else if want := fmt.Sprintf("Xen %d.%d ", v[0], v[1]); !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name version %s", err, want)
		}
	}
}

func TestDomctlHeader(t *testing.T) {
	a, _ := abiFor(4, 17)
	b := a.newDomctl(domctlPauseDomain, 0x1234)
	if len(b) != 144 { // sizeof(struct xen_domctl)
		t.Fatalf("domctl size %d", len(b))
	}
	if le.Uint32(b[0:]) != 3 || le.Uint32(b[4:]) != 0x15 || le.Uint16(b[8:]) != 0x1234 {
		t.Errorf("header: % x", b[:16])
	}
	s := a.newSysctl(sysctlPhysinfo)
	if len(s) != 136 || le.Uint32(s[0:]) != 3 || le.Uint32(s[4:]) != 0x15 {
		t.Errorf("sysctl header: len %d % x", len(s), s[:8])
	}
}

func TestCreateDomainLayout(t *testing.T) {
	cfg := DomainConfig{Flags: CreateHVM | CreateHAP, MaxVCPUs: 7, MaxEvtchnPort: 511,
		MaxGrantFrames: 32, MaxMaptrackFrames: 256, EmulationFlags: 0x1}
	for i := range cfg.Handle {
		cfg.Handle[i] = byte(0xa0 + i)
	}
	// offsets (relative to xen_domctl.u at 16) per abidump-4.1x.txt
	for _, c := range []struct {
		major, minor                         int
		flags, maxVCPUs, evtchn, grant, mapt int
		grantOpts, arch                      int
	}{
		{4, 17, 20, 28, 32, 36, 40, 44, 56},
		{4, 18, 20, 28, 32, 36, 40, 44, 56},
		{4, 19, 20, 28, 32, 36, 40, 44, 60},
		{4, 20, 20, 28, 32, 36, 40, 44, 60},
	} {
		a, _ := abiFor(c.major, c.minor)
		b := a.newDomctl(domctlCreateDomain, 0)
		a.encodeCreateDomain(b, cfg, 2)
		u := b[16:]
		if string(u[4:20]) != string(cfg.Handle[:]) {
			t.Errorf("%d.%d handle @4: % x", c.major, c.minor, u[4:20])
		}
		for _, f := range []struct {
			name string
			off  int
			want uint32
		}{
			{"flags", c.flags, 3}, {"max_vcpus", c.maxVCPUs, 7}, {"max_evtchn_port", c.evtchn, 511},
			{"max_grant_frames", c.grant, 32}, {"max_maptrack_frames", c.mapt, 256},
			{"grant_opts", c.grantOpts, 2}, {"arch.emulation_flags", c.arch, 1},
		} {
			if got := le.Uint32(u[f.off:]); got != f.want {
				t.Errorf("%d.%d %s @%d = %d, want %d", c.major, c.minor, f.name, f.off, got, f.want)
			}
		}
		// everything else (ssidref, iommu_opts, vmtrace, cpupool, altp2m, misc_flags) zero
		for _, off := range []int{0, 24, a.cdVmtrace, a.cdCpupool, a.cdArch + 4} {
			if le.Uint32(u[off:]) != 0 {
				t.Errorf("%d.%d field @%d not zero", c.major, c.minor, off)
			}
		}
	}
	// zero limits get the defaults: evtchn 1023, grant/maptrack -1 (Xen's)
	a, _ := abiFor(4, 17)
	b := a.newDomctl(domctlCreateDomain, 0)
	a.encodeCreateDomain(b, DomainConfig{MaxVCPUs: 1}, 1)
	u := b[16:]
	if le.Uint32(u[32:]) != 1023 || int32(le.Uint32(u[36:])) != -1 || int32(le.Uint32(u[40:])) != -1 {
		t.Errorf("defaults: evtchn %d grant %d maptrack %d", le.Uint32(u[32:]), int32(le.Uint32(u[36:])), int32(le.Uint32(u[40:])))
	}
}

func TestDomainInfoLayout(t *testing.T) {
	b := make([]byte, domInfoSize) // sizeof(struct xen_domctl_getdomaininfo) = 112
	le.PutUint16(b[0:], 42)
	le.PutUint32(b[4:], dominfShutdown|dominfPaused|dominfHVM|dominfHAP|3<<16) // crash
	le.PutUint64(b[8:], 1000)                                                  // tot_pages
	le.PutUint64(b[16:], 2000)                                                 // max_pages
	le.PutUint64(b[56:], 123456789)                                            // cpu_time
	le.PutUint32(b[64:], 2)                                                    // nr_online_vcpus
	le.PutUint32(b[68:], 3)                                                    // max_vcpu_id
	for i := 0; i < 16; i++ {
		b[76+i] = byte(i + 1) // handle
	}
	le.PutUint32(b[92:], 5) // cpupool
	di := decodeDomainInfo(b)
	want := DomainInfo{Domid: 42, HVM: true, HAP: true, Shutdown: true, ShutdownReason: ShutdownCrash,
		Paused: true, TotPages: 1000, MaxPages: 2000, CPUTime: 123456789, OnlineVCPUs: 2, MaxVCPUID: 3, CPUPool: 5,
		Handle: Handle{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}}
	if di != want {
		t.Errorf("decoded %+v\nwant    %+v", di, want)
	}
	le.PutUint32(b[4:], dominfDying|dominfBlocked|dominfRunning)
	di = decodeDomainInfo(b)
	if !di.Dying || !di.Blocked || !di.Running || di.Paused || di.Shutdown {
		t.Errorf("flags: %+v", di)
	}
}

func TestPhysInfoLayout(t *testing.T) {
	b := make([]byte, 112) // sizeof(struct xen_sysctl_physinfo), physinfo-*.txt
	for off, v := range map[int]uint32{0: 2, 4: 8, 8: 16, 12: 31, 16: 1, 24: 2400000, 28: 0xa3} {
		le.PutUint32(b[off:], v)
	}
	le.PutUint64(b[40:], 1<<20)
	le.PutUint64(b[48:], 1<<19)
	le.PutUint64(b[56:], 77)
	pi := decodePhysInfo(b)
	want := PhysInfo{ThreadsPerCore: 2, CoresPerSocket: 8, NrCPUs: 16, MaxCPUID: 31, NrNodes: 1,
		CPUkHz: 2400000, Capabilities: 0xa3, TotalPages: 1 << 20, FreePages: 1 << 19, ScrubPages: 77}
	if pi != want {
		t.Errorf("decoded %+v, want %+v", pi, want)
	}
}

func TestSmallStructLayouts(t *testing.T) {
	a, _ := abiFor(4, 17)
	// xen_sysctl_getdomaininfolist: first_domain@0 max_domains@4 buffer@8 num_domains@16
	s := a.newSysctl(sysctlGetDomainInfoList)
	encodeGetDomainInfoList(s, 7, 64, 0x1122334455)
	u := s[8:]
	if le.Uint16(u[0:]) != 7 || le.Uint32(u[4:]) != 64 || le.Uint64(u[8:]) != 0x1122334455 {
		t.Errorf("getdomaininfolist: % x", u[:24])
	}
	le.PutUint32(u[16:], 9)
	if getDomainInfoListCount(s) != 9 {
		t.Errorf("num_domains not read at 16")
	}
	// xen_memory_reservation: extent_start@0 nr_extents@8 extent_order@16 mem_flags@20 domid@24, 32 B
	r := make([]byte, memReservationSize)
	encodeMemReservation(r, 0xdead000, 512, 9, 3)
	if memReservationSize != 32 || le.Uint64(r[0:]) != 0xdead000 || le.Uint64(r[8:]) != 512 || le.Uint32(r[16:]) != 9 || le.Uint16(r[24:]) != 3 {
		t.Errorf("memory reservation: % x", r)
	}
	// sched_remote_shutdown: domain_id@0 reason@4, 8 B
	rs := make([]byte, remoteShutdownSize)
	encodeRemoteShutdown(rs, 5, ShutdownReboot)
	if le.Uint16(rs[0:]) != 5 || le.Uint32(rs[4:]) != 1 {
		t.Errorf("remote shutdown: % x", rs)
	}
	// xen_domctl_shadow_op: op@0 mode@4 mb@8 dirty_bitmap@16 pages@24 stats@32, 40 B
	d := a.newDomctl(domctlShadowOp, 1)
	encodeShadowOp(d, ShadowOpClean, 0, 16, 0xbeef000, 4096)
	u = d[16:]
	if le.Uint32(u[0:]) != 11 || le.Uint32(u[8:]) != 16 || le.Uint64(u[16:]) != 0xbeef000 || le.Uint64(u[24:]) != 4096 {
		t.Errorf("shadow_op: % x", u[:40])
	}
	le.PutUint32(u[32:], 4)
	le.PutUint32(u[36:], 6)
	if st := decodeShadowOp(d); st.FaultCount != 4 || st.DirtyCount != 6 || st.MB != 16 || st.Pages != 4096 {
		t.Errorf("shadow stats %+v", st)
	}
	// xen_domctl_getvcpuinfo: vcpu@0 online@4 blocked@5 running@6 cpu_time@8 cpu@16, 24 B
	v := make([]byte, 24)
	le.PutUint32(v[0:], 1)
	v[4], v[6] = 1, 1
	le.PutUint64(v[8:], 99)
	le.PutUint32(v[16:], 3)
	if vi := decodeVCPUInfo(v); vi != (VCPUInfo{VCPU: 1, Online: true, Running: true, CPUTime: 99, CPU: 3}) {
		t.Errorf("vcpuinfo %+v", vi)
	}
	// xen_domctl_vcpuaffinity: vcpu@0 flags@4 hard{bitmap@8 nr_bits@16} soft{@24 @32}, 40 B
	d = a.newDomctl(domctlSetVCPUAffinity, 1)
	encodeVCPUAffinity(d, 2, 3, 0x1000, 8, 0x2000, 16)
	u = d[16:]
	if le.Uint32(u[0:]) != 2 || le.Uint32(u[4:]) != 3 || le.Uint64(u[8:]) != 0x1000 || le.Uint32(u[16:]) != 8 ||
		le.Uint64(u[24:]) != 0x2000 || le.Uint32(u[32:]) != 16 {
		t.Errorf("vcpuaffinity: % x", u[:40])
	}
}

func TestDeviceStructLayouts(t *testing.T) {
	// privcmd_mmapbatch_v2 (privcmd_abi.txt): num@0 dom@4 addr@8 arr@16 err@24, 32 B
	b := encodeMmapBatchV2(3, 9, 0x1000, 0x2000, 0x3000)
	if len(b) != 32 || le.Uint32(b[0:]) != 3 || le.Uint16(b[4:]) != 9 || le.Uint64(b[8:]) != 0x1000 ||
		le.Uint64(b[16:]) != 0x2000 || le.Uint64(b[24:]) != 0x3000 {
		t.Errorf("mmapbatch_v2: % x", b)
	}
	// ioctl_gntdev_map_grant_ref with one ref is 24 B (IOCTL_GNTDEV_MAP_GRANT_REF size field 0x18)
	g := encodeMapGrantRef(4, []uint32{77})
	if len(g) != 24 || ioctlGntdevMapGrantRef>>16&0x3fff != 24 || le.Uint32(g[0:]) != 1 || le.Uint32(g[16:]) != 4 || le.Uint32(g[20:]) != 77 {
		t.Errorf("map_grant_ref: % x", g)
	}
	if ioctlPrivcmdHypercall>>16&0x3fff != 48 || ioctlPrivcmdMmapBatchV2>>16&0x3fff != 32 {
		t.Errorf("privcmd ioctl sizes wrong")
	}
}

func FuzzDecodeDomainInfo(f *testing.F) {
	f.Add(make([]byte, domInfoSize))
	f.Add([]byte(strings.Repeat("\xff", domInfoSize)))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < domInfoSize {
			return
		}
		di := decodeDomainInfo(b)
		flags := le.Uint32(b[4:])
		if di.Paused != (flags&dominfPaused != 0) || uint32(di.ShutdownReason) != flags>>16&0xff || di.Domid != Domid(le.Uint16(b)) {
			t.Fatalf("decode disagrees with flags %#x: %+v", flags, di)
		}
	})
}

// TestGetCPUInfoLayout: struct xen_sysctl_getcpuinfo is max_cpus@0,
// info handle@8, nr_cpus@16; xen_sysctl_cpuinfo is one uint64 idletime.
func TestGetCPUInfoLayout(t *testing.T) {
	a, err := abiFor(4, 17)
	if err != nil {
		t.Fatal(err)
	}
	sc := a.newSysctl(sysctlGetCPUInfo)
	encodeGetCPUInfo(sc, 8, 0xdead000)
	if le.Uint32(sc[0:]) != 8 || le.Uint32(sc[8:]) != 8 || le.Uint64(sc[16:]) != 0xdead000 {
		t.Errorf("getcpuinfo: % x", sc[:32])
	}
	le.PutUint32(sc[24:], 2)
	if n := getCPUInfoCount(sc); n != 2 {
		t.Errorf("nr_cpus %d, want 2", n)
	}
	info := make([]byte, 2*cpuInfoSize)
	le.PutUint64(info[0:], 1_500_000_000)
	le.PutUint64(info[8:], 7)
	if got := decodeCPUIdle(info, 2); len(got) != 2 || got[0] != 1500*time.Millisecond || got[1] != 7 {
		t.Errorf("idle times %v", got)
	}
}
