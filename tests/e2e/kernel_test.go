package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/internal/elftest"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// pvhKernel is a small PVH kernel that passes the kernel checks: one
// executable segment at 1 MiB and XEN_ELFNOTE_PHYS32_ENTRY.
func pvhKernel() []byte {
	text := bytes.Repeat([]byte("PVHTEXT!"), 1500)
	return elftest.Image{
		Segments: []elftest.Segment{{Paddr: 0x100000, Vaddr: 0xffffffff80100000, Data: text, Memsz: uint64(len(text)) + 0x4000, Flags: 5}},
		Notes:    []elftest.Note{elftest.XenNote(18, elftest.U32(0x100000))},
	}.Build()
}

// pvKernel is a small 64-bit PV kernel with the notes Linux has.
func pvKernel() []byte {
	const virtBase = 0xffffffff80000000
	text := bytes.Repeat([]byte("PVKERNEL"), 2000)
	return elftest.Image{
		Entry:    0x1000000,
		Segments: []elftest.Segment{{Paddr: 0x1000000, Vaddr: virtBase + 0x1000000, Data: text, Memsz: uint64(len(text)) + 0x5000, Flags: 5}},
		Notes: []elftest.Note{
			elftest.XenNote(5, elftest.CString("xen-3.0")),      // XEN_VERSION
			elftest.XenNote(3, elftest.U64(virtBase)),           // VIRT_BASE
			elftest.XenNote(4, elftest.U64(0)),                  // PADDR_OFFSET
			elftest.XenNote(1, elftest.U64(virtBase+0x1000010)), // ENTRY
		},
	}.Build()
}

func writeKernel(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestKernelBootsOnSim: a VM with a kernel is built on the simulator by the
// real builder (its kernel and ramdisk are loaded into the domain), and its
// simulated guest boots on the rings the builder set up: it connects to
// xenstored, advertises its features and answers control/shutdown.
func TestKernelBootsOnSim(t *testing.T) {
	d := harness.StartDaemon(t, binaries(t))
	simc := d.Sim()
	c := newAPI(d.Conn())
	ctx := testCtx(t, 3*time.Minute)
	xs, err := xenstore.Dial(ctx, simc.XenstoredPath())
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	ramdisk := writeKernel(t, "initrd", bytes.Repeat([]byte{0x5a, 0xa5}, 50000))
	for _, tc := range []struct {
		name   string
		typ    apiv1.DomainType
		kernel []byte
	}{
		{"pvh-guest", apiv1.DomainType_DOMAIN_TYPE_PVH, pvhKernel()},
		{"pv-guest", apiv1.DomainType_DOMAIN_TYPE_PV, pvKernel()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := spec(tc.name, 64<<20)
			s.Type = tc.typ
			s.Kernel = writeKernel(t, "vmlinux", tc.kernel)
			s.Ramdisk = ramdisk
			s.Cmdline = "console=hvc0"
			if _, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: s}); err != nil {
				t.Fatal(err)
			}
			r, err := c.vm.StartVM(ctx, &apiv1.StartVMRequest{Id: tc.name, Wait: true})
			mustSucceed(t, "start "+tc.name, r.GetTask(), err)
			vm := cliVM(t, d, tc.name)
			if vm.GetPowerState() != apiv1.PowerState_POWER_STATE_RUNNING {
				t.Fatalf("after start: %s", describeVM(vm))
			}
			dom := fmt.Sprintf("/local/domain/%d", vm.GetDomid())
			read := func(path string) string {
				b, err := xs.Read(ctx, dom+path)
				if err != nil {
					t.Errorf("%s%s: %v", dom, path, err)
				}
				return string(b)
			}
			if got := read("/name"); got != tc.name {
				t.Errorf("%s/name = %q", dom, got)
			}
			// The builder's rings, not the empty domain's stand-ins (port 0).
			for _, p := range []string{"/store/port", "/store/ring-ref", "/console/port", "/console/ring-ref"} {
				if v := read(p); v == "" || v == "0" {
					t.Errorf("%s%s = %q: no ring set up by the builder", dom, p, v)
				}
			}
			// The guest boots: it writes its features as Linux does.
			eventually(t, time.Minute, func() string {
				if b, err := xs.Read(ctx, dom+"/control/feature-poweroff"); err != nil || string(b) != "1" {
					return fmt.Sprintf("control/feature-poweroff = %q, %v: the guest did not connect", b, err)
				}
				return ""
			})
			r2, err := c.vm.ShutdownVM(ctx, &apiv1.ShutdownVMRequest{Id: tc.name, Wait: true})
			mustSucceed(t, "shutdown "+tc.name, r2.GetTask(), err)
			if vm := cliVM(t, d, tc.name); vm.GetPowerState() != apiv1.PowerState_POWER_STATE_HALTED {
				t.Fatalf("after shutdown: %s", describeVM(vm))
			}
			if _, err := xs.Read(ctx, dom); !errors.Is(err, syscall.ENOENT) {
				t.Errorf("%s after shutdown: %v, want ENOENT", dom, err)
			}
		})
	}
}

// TestBadKernelRefusedOnSim: a kernel that cannot be loaded (missing, a
// directory, not an ELF, a FIFO) is refused at start with INVALID_ARGUMENT
// naming spec.kernel, and the failed start leaves nothing behind: no
// domain, no xenstore nodes, the VM still halted.
func TestBadKernelRefusedOnSim(t *testing.T) {
	d := harness.StartDaemon(t, binaries(t))
	simc := d.Sim()
	c := newAPI(d.Conn())
	ctx := testCtx(t, 3*time.Minute)
	xs, err := xenstore.Dial(ctx, simc.XenstoredPath())
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, kernel string }{
		{"missing", filepath.Join(dir, "no-such-vmlinux")},
		{"directory", dir},
		{"garbage", writeKernel(t, "garbage", bytes.Repeat([]byte("not an ELF or a bzImage "), 1000))},
		{"fifo", fifo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "bad-" + tc.name
			s := spec(name, 64<<20)
			s.Kernel = tc.kernel
			if _, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: s}); err != nil {
				t.Fatalf("create (the kernel is read at start): %v", err)
			}
			vm := cliVM(t, d, name)
			localBefore := listDomainNodes(t, xs)
			sctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			r, err := c.vm.StartVM(sctx, &apiv1.StartVMRequest{Id: name, Wait: true})
			if err != nil {
				t.Fatalf("start: %v", err)
			}
			if tk := r.GetTask(); tk.GetState() != apiv1.TaskState_TASK_STATE_FAILED ||
				tk.GetError().GetCode() != "INVALID_ARGUMENT" || tk.GetError().GetField() != "spec.kernel" {
				t.Fatalf("start: task %v, error %v; want FAILED with INVALID_ARGUMENT on spec.kernel", tk.GetState(), tk.GetError())
			}
			t.Logf("refused: %s", r.GetTask().GetError().GetMessage())
			if vm := cliVM(t, d, name); vm.GetPowerState() != apiv1.PowerState_POWER_STATE_HALTED || vm.GetDomid() != 0 {
				t.Errorf("after the failed start: %s, want halted without a domain", describeVM(vm))
			}
			h := handleOf(t, vm.GetId())
			eventually(t, time.Minute, func() string {
				if di, ok := guestDomains(t, simc)[h]; ok {
					return fmt.Sprintf("domain %d of the refused VM still on the host", di.Domid)
				}
				return ""
			})
			for _, p := range []string{"/vm/" + vm.GetId(), "/xenopsd-ng/" + vm.GetId()} {
				if _, err := xs.Read(ctx, p); !errors.Is(err, syscall.ENOENT) {
					t.Errorf("%s after the failed start: %v, want ENOENT", p, err)
				}
			}
			if localAfter := listDomainNodes(t, xs); fmt.Sprint(localAfter) != fmt.Sprint(localBefore) {
				t.Errorf("/local/domain: %v before the start, %v after", localBefore, localAfter)
			}
		})
	}
}

// listDomainNodes lists /local/domain (none: the node does not exist yet).
func listDomainNodes(t *testing.T, xs *xenstore.Client) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := xs.List(ctx, "/local/domain")
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		t.Fatal(err)
	}
	return l
}
