package dom0

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

// QEMU for the qdisk backend (qcow2 disks).
//
// libxl starts, for a PV or PVH guest with a qdisk disk, QEMU's Xen PV machine
// attached to the existing domain; that QEMU serves every
// backend/qdisk/<domid>/* directory. We start it the same way (QEMUArgs),
// in its own session so that it outlives the daemon (kill -9 of the daemon
// must not take the guest's disks with it), with its output in
// <QEMULogDir>/qemu-dm-<domid>.log. While the daemon that started it runs,
// a goroutine reaps it and logs its exit; a daemon started later finds it
// by pid and start time (/proc/<pid>/stat) and, to stop it, signals it and
// waits for /proc to show it gone (or a zombie: its parent is then init).

// DefaultQEMU is where Debian's qemu-system-xen installs QEMU's Xen device
// model, libxl's default device model path.
const DefaultQEMU = "/usr/libexec/xen-qemu-system-i386"

// DefaultQEMULogDir is where QEMU's output goes, as libxl's qemu-dm logs.
const DefaultQEMULogDir = "/var/log/xen"

// qemuStopWait is how long StopQEMU waits after SIGTERM before SIGKILL.
const qemuStopWait = 5 * time.Second

// QEMUArgs are QEMU's arguments for domain domid: the Xen PV machine
// attached to the domain (libxl_dm.c's for a PV or PVH guest, less the QMP
// sockets and the display we do not use).
func QEMUArgs(domid uint32) []string {
	return []string{
		"-xen-domid", strconv.FormatUint(uint64(domid), 10), "-xen-attach",
		"-name", "qdisk-" + strconv.FormatUint(uint64(domid), 10),
		"-machine", "xenpv", "-nodefaults", "-no-user-config",
		"-display", "none", "-vga", "none", "-monitor", "none", "-serial", "none", "-parallel", "none",
	}
}

// StartQEMU implements devices.Host.
func (h *Host) StartQEMU(ctx context.Context, domid uint32) (devices.QEMUProc, error) {
	if err := ctx.Err(); err != nil {
		return devices.QEMUProc{}, err
	}
	if err := os.MkdirAll(h.qemuLogDir, 0o755); err != nil {
		return devices.QEMUProc{}, fmt.Errorf("QEMU's log directory: %w", err)
	}
	logPath := filepath.Join(h.qemuLogDir, fmt.Sprintf("qemu-dm-%d.log", domid))
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return devices.QEMUProc{}, fmt.Errorf("QEMU's log: %w", err)
	}
	defer logf.Close()
	// Not exec.CommandContext: QEMU outlives the call (and the daemon).
	cmd := exec.Command(h.qemu, QEMUArgs(domid)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return devices.QEMUProc{}, fmt.Errorf("starting %s: %w", h.qemu, err)
	}
	pid := cmd.Process.Pid
	done := make(chan struct{})
	h.mu.Lock()
	h.children[pid] = done
	h.mu.Unlock()
	go func() {
		err := cmd.Wait()
		h.mu.Lock()
		delete(h.children, pid)
		stopping := h.stopping[pid]
		delete(h.stopping, pid)
		h.mu.Unlock()
		close(done)
		if stopping {
			h.log.Info("QEMU exited", "domid", domid, "qemu_pid", pid, "status", cmd.ProcessState.String())
		} else {
			h.log.Error("QEMU exited on its own: the domain's qcow2 disks are not served any more", "domid", domid, "qemu_pid", pid,
				"status", errString(err, cmd), "log", logPath, "log_tail", logTail(logPath, 1024))
		}
	}()
	st, err := readProcStat(h.proc, pid)
	if err == nil {
		err = h.waitExeced(ctx, pid, domid, done)
	}
	if err != nil {
		_ = cmd.Process.Kill()
		<-done
		return devices.QEMUProc{}, fmt.Errorf("QEMU pid %d: %w", pid, err)
	}
	h.log.Info("QEMU started", "domid", domid, "qemu_pid", pid, "log", logPath)
	return devices.QEMUProc{Pid: pid, Start: st.start}, nil
}

// execWait bounds waitExeced.
const execWait = 10 * time.Second

// waitExeced waits until /proc shows QEMU's own command line: the kernel
// lets exec's caller go (Start returns) before it has set the new
// program's arguments, and until then /proc/<pid>/cmdline is empty, which
// isQEMU would take for a process that is gone.
func (h *Host) waitExeced(ctx context.Context, pid int, domid uint32, done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, execWait)
	defer cancel()
	want := []byte("\x00-xen-domid\x00" + strconv.FormatUint(uint64(domid), 10) + "\x00")
	for {
		if b, err := os.ReadFile(filepath.Join(h.proc, strconv.Itoa(pid), "cmdline")); err == nil && bytes.Contains(b, want) {
			return nil
		}
		select {
		case <-done:
			return errors.New("exited at once")
		case <-ctx.Done():
			return fmt.Errorf("its command line did not show in %s: %w", h.proc, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// logTail is the last n bytes of a log ("" if it cannot be read).
func logTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		_, _ = f.Seek(fi.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, n))
	return strings.TrimSpace(string(b))
}

func errString(err error, cmd *exec.Cmd) string {
	if cmd.ProcessState != nil {
		return cmd.ProcessState.String()
	}
	return err.Error()
}

// QEMUAlive implements devices.Host.
func (h *Host) QEMUAlive(_ context.Context, q devices.QEMUProc, domid uint32) (bool, error) {
	return h.isQEMU(q, domid)
}

// isQEMU is whether q is running (not a zombie) and is the QEMU of domid.
func (h *Host) isQEMU(q devices.QEMUProc, domid uint32) (bool, error) {
	if q.Pid <= 0 {
		return false, nil
	}
	st, err := readProcStat(h.proc, q.Pid)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if st.start != q.Start || st.state == 'Z' || st.state == 'X' {
		return false, nil
	}
	cmdline, err := os.ReadFile(filepath.Join(h.proc, strconv.Itoa(q.Pid), "cmdline"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	want := "\x00-xen-domid\x00" + strconv.FormatUint(uint64(domid), 10) + "\x00"
	return bytes.Contains(cmdline, []byte(want)), nil
}

// StopQEMU implements devices.Host.
func (h *Host) StopQEMU(ctx context.Context, q devices.QEMUProc, domid uint32) error {
	alive, err := h.isQEMU(q, domid)
	if err != nil || !alive {
		return err
	}
	h.mu.Lock()
	done := h.children[q.Pid]
	h.stopping[q.Pid] = done != nil
	h.mu.Unlock()
	gone := func(wait time.Duration) bool {
		t := time.NewTimer(wait)
		defer t.Stop()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if done != nil {
				select {
				case <-done:
					return true
				default:
				}
			} else if alive, err := h.isQEMU(q, domid); err == nil && !alive {
				return true
			}
			select {
			case <-ctx.Done():
				return false
			case <-t.C:
				return false
			case <-tick.C:
			}
		}
	}
	if err := syscall.Kill(q.Pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("SIGTERM to QEMU pid %d: %w", q.Pid, err)
	}
	if gone(qemuStopWait) {
		return nil
	}
	if ctx.Err() == nil {
		h.log.Warn("QEMU ignored SIGTERM; killing it", "domid", domid, "qemu_pid", q.Pid)
		// Still ours (checked again): a pid is never signalled after it
		// was reused.
		if alive, err := h.isQEMU(q, domid); err == nil && alive {
			if err := syscall.Kill(q.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("SIGKILL to QEMU pid %d: %w", q.Pid, err)
			}
		}
		if gone(qemuStopWait) {
			return nil
		}
	}
	return fmt.Errorf("QEMU pid %d still runs after SIGTERM and SIGKILL: %w", q.Pid, context.Cause(ctx))
}

// procStat is what we read of /proc/<pid>/stat.
type procStat struct {
	state byte
	start uint64 // starttime: clock ticks after boot
}

// readProcStat parses /proc/<pid>/stat (proc(5)): the command, in
// parentheses, may hold anything, so fields are counted after its last ')'.
func readProcStat(proc string, pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(string(b))
}

func parseProcStat(s string) (procStat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc stat %q: no command", s)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); starttime is field 22.
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("/proc stat %q: too few fields", s)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("/proc stat: starttime %q: %w", f[19], err)
	}
	return procStat{state: f[0][0], start: start}, nil
}
