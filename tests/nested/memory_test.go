package nested

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
)

// rssBound is the most resident memory the daemon may hold after any of
// TestNestedDaemonMemory's starts: the target for a 1 GiB dom0,
// under 64 MiB after ten guest starts and ten refused bombs, at the
// default --memory-limit (256M, which leaves room for a distribution's
// compressed kernel) and at 64M. Measured at 64M: 22 MB idle, 26-29 MB
// after each guest start, 34-52 MB after the bombs. (With the decompressed
// output pooled on the Go heap it was not met: 78-82 MB after the bombs,
// the runtime at its soft limit plus the binary.) The peak while a guest
// is built, VmHWM, is higher (~93 MB): the 60 MB vmlinux is mapped
// (file pages, unmapped when the build ends); it is logged, not bounded.
const rssBound = 64 << 20

// TestNestedDaemonMemory: at the default memory budget and at 64 MiB, the
// daemon's resident memory stays bounded over ten guest starts (start +
// destroy, PVH and PV alternating) and ten starts of a decompression bomb
// (a bzImage whose xz payload expands past its size trailer, refused with
// InvalidArgument on spec.kernel); at 64 MiB a bomb whose trailer asks for
// more than the whole budget is refused unread with ResourceExhausted. VmRSS
// (and the peak, VmHWM) is logged after each start, one line per sample;
// the test fails if VmRSS exceeds rssBound or the daemon was OOM-killed
// (another pid, or an oom-kill line in dmesg naming it).
func TestNestedDaemonMemory(t *testing.T) {
	needNested(t)
	needGuest(t)
	dir := t.TempDir()
	zeros := xzZeros32M(t)
	bomb := filepath.Join(dir, "bzImage-bomb")
	if err := os.WriteFile(bomb, xzBombImage(zeros, 20<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	// huge's worst case (its 200 MiB trailer) is over the 64 MiB budget.
	huge := filepath.Join(dir, "bzImage-huge")
	if err := os.WriteFile(huge, xzBombImage(zeros, 200<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []string{"default", "64M"} {
		t.Run("limit="+limit, func(t *testing.T) {
			if limit == "default" {
				memoryCurve(t, nil, bomb, "")
				return
			}
			memoryCurve(t, []string{"--memory-limit=" + limit}, bomb, huge)
		})
	}
}

// memoryCurve runs TestNestedDaemonMemory's starts against a daemon started
// with args; huge, if set, is a kernel over the daemon's budget.
func memoryCurve(t *testing.T, args []string, bomb, huge string) {
	e := newEnv(t)
	e.args = args
	e.start()
	pid := e.daemon.Process.Pid
	var peak uint64
	sample := func(what string) {
		t.Helper()
		rss, hwm := procMemory(t, pid)
		peak = max(peak, rss)
		t.Logf("rss-sample %-16s VmRSS %6d KiB  VmHWM %6d KiB", what, rss>>10, hwm>>10)
	}
	sample("idle")

	for _, typ := range []string{"pvh", "pv"} {
		if _, err := e.ctl("vm", "create", "--name", "mem"+typ, "--type", typ, "--memory", "128M", "--vcpus", "1",
			"--kernel", guestKernel, "--ramdisk", guestInitrd, "--cmdline", guestCmdline); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		name := "mem" + []string{"pvh", "pv"}[i%2]
		if _, err := e.ctl("vm", "start", name); err != nil {
			t.Fatalf("start %d (%s): %v\n%s", i, name, err, tail([]byte(e.logText()), 2000))
		}
		if _, err := e.ctl("vm", "destroy", name); err != nil {
			t.Fatalf("destroy %d (%s): %v", i, name, err)
		}
		sample(fmt.Sprintf("guest-%d-%s", i, name[3:]))
	}

	for _, c := range []struct{ name, kernel string }{{"membomb", bomb}, {"memhuge", huge}} {
		if c.kernel == "" {
			continue
		}
		if _, err := e.ctl("vm", "create", "--name", c.name, "--type", "pvh", "--memory", "128M",
			"--kernel", c.kernel, "--ramdisk", guestInitrd, "--cmdline", guestCmdline); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		_, err := e.ctl("vm", "start", "membomb")
		if err == nil || !strings.Contains(err.Error(), "INVALID_ARGUMENT") || !strings.Contains(err.Error(), "spec.kernel") {
			t.Fatalf("bomb %d: %v, want InvalidArgument on spec.kernel", i, err)
		}
		if i == 0 {
			t.Logf("bomb refused: %s", tail([]byte(err.Error()), 300))
		}
		sample(fmt.Sprintf("bomb-%d", i))
	}
	if huge != "" {
		_, err := e.ctl("vm", "start", "memhuge")
		if err == nil || !strings.Contains(err.Error(), "RESOURCE_EXHAUSTED") || !strings.Contains(err.Error(), "spec.kernel") {
			t.Fatalf("over-budget kernel: %v, want ResourceExhausted on spec.kernel", err)
		}
		t.Logf("over-budget kernel refused: %s", tail([]byte(err.Error()), 300))
		sample("over-budget")
	}

	select {
	case err := <-e.done:
		e.daemon = nil
		t.Fatalf("xenopsd-ng (pid %d) exited: %v\n%s", pid, err, tail([]byte(e.logText()), 2000))
	default:
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
		t.Fatalf("xenopsd-ng pid %d is gone: %v", pid, err)
	}
	if out, err := exec.Command("dmesg").Output(); err != nil {
		t.Errorf("dmesg: %v", err)
	} else {
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(strings.ToLower(l), "oom") && strings.Contains(l, "xenopsd") {
				t.Errorf("dmesg: %s", l)
			}
		}
	}
	t.Logf("largest VmRSS after a start: %d KiB (bound %d KiB)", peak>>10, rssBound>>10)
	if peak > rssBound {
		t.Errorf("the daemon's VmRSS reached %d KiB, more than %d KiB", peak>>10, rssBound>>10)
	}
}

// procMemory reads VmRSS and VmHWM (bytes) of process pid.
func procMemory(t *testing.T, pid int) (rss, hwm uint64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("daemon status: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			t.Fatalf("%s: %q", k, v)
		}
		switch k {
		case "VmRSS":
			rss = n << 10
		case "VmHWM":
			hwm = n << 10
		}
	}
	return rss, hwm
}

// xzZeros32M is an .xz stream (LZMA2, 8 MiB dictionary) of 32 MiB of
// zeros: a few KiB.
func xzZeros32M(t *testing.T) []byte {
	var buf bytes.Buffer
	w, err := xz.WriterConfig{DictCap: 8 << 20}.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for range 32 {
		if _, err := w.Write(zeros); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// xzBombImage is a bzImage like the bomb once sent to the daemon: the xz
// stream, padded to 1.3 MB (padding after the stream raises the ratio
// limit, 64 x 1.3 MB = 83 MB), whose size trailer claims declared bytes.
// With a trailer within the budget it is decompressed and refused as soon
// as its output passes the trailer or outruns the ratio; with one beyond
// it, refused unread.
func xzBombImage(stream []byte, declared uint32) []byte {
	payload := append(bytes.Clone(stream), make([]byte, 1300<<10-len(stream))...)
	payload = binary.LittleEndian.AppendUint32(payload, declared)
	// The x86 boot protocol's setup header (2.15), 3 setup sectors, the
	// payload 0x100 bytes after them.
	le := binary.LittleEndian
	setup := make([]byte, 4*512)
	setup[0x1f1] = 3
	le.PutUint16(setup[0x1fe:], 0xAA55)
	copy(setup[0x202:], "HdrS")
	le.PutUint16(setup[0x206:], 0x020f)
	le.PutUint32(setup[0x248:], 0x100)
	le.PutUint32(setup[0x24c:], uint32(len(payload)))
	img := append(setup, make([]byte, 0x100)...)
	img = append(img, payload...)
	return append(img, make([]byte, 64)...)
}
