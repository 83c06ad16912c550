package dom0

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

func TestParseProcStat(t *testing.T) {
	// The command may hold spaces and parentheses.
	st, err := parseProcStat("4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n")
	if err != nil || st.state != 'S' || st.start != 987654 {
		t.Fatalf("parse = %+v, %v", st, err)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 notanumber"} {
		if _, err := parseProcStat(bad); err == nil {
			t.Errorf("parseProcStat(%q) accepted", bad)
		}
	}
}

// TestQEMUProcess: a stand-in QEMU (a shell loop) is started in its own
// session with its log, recognised by pid, start time and -xen-domid,
// and stopped and reaped.
func TestQEMUProcess(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "qemu")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho qemu-started \"$@\"\nwhile :; do sleep 1; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	h := New(slog.New(slog.DiscardHandler))
	h.SetQEMU(bin, filepath.Join(dir, "log"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, err := h.StartQEMU(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	defer h.StopQEMU(context.Background(), q, 7)
	for _, c := range []struct {
		q     devices.QEMUProc
		domid uint32
		want  bool
	}{{q, 7, true}, {q, 8, false}, {devices.QEMUProc{Pid: q.Pid, Start: q.Start + 1}, 7, false}, {devices.QEMUProc{}, 7, false}} {
		if alive, err := h.QEMUAlive(ctx, c.q, c.domid); err != nil || alive != c.want {
			t.Errorf("QEMUAlive(%+v, %d) = %v, %v; want %v", c.q, c.domid, alive, err, c.want)
		}
	}
	if sid, err := sessionOf(q.Pid); err != nil || sid != q.Pid {
		t.Errorf("QEMU's session %d (%v), want its own (%d)", sid, err, q.Pid)
	}
	logPath := filepath.Join(dir, "log", "qemu-dm-7.log")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		log, err := os.ReadFile(logPath)
		if err == nil && strings.Contains(string(log), "qemu-started -xen-domid 7 -xen-attach") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU's log = %q, %v", log, err)
		}
	}
	// A wrong start time is another process: StopQEMU leaves it alone.
	if err := h.StopQEMU(ctx, devices.QEMUProc{Pid: q.Pid, Start: q.Start + 1}, 7); err != nil {
		t.Fatal(err)
	}
	if alive, _ := h.QEMUAlive(ctx, q, 7); !alive {
		t.Fatal("StopQEMU with a wrong start time stopped the process")
	}
	if err := h.StopQEMU(ctx, q, 7); err != nil {
		t.Fatal(err)
	}
	if alive, err := h.QEMUAlive(ctx, q, 7); err != nil || alive {
		t.Fatalf("after StopQEMU: alive %v, %v", alive, err)
	}
	h.mu.Lock()
	n := len(h.children)
	h.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d children not reaped", n)
	}
	if err := h.StopQEMU(ctx, q, 7); err != nil {
		t.Fatalf("second StopQEMU: %v", err)
	}
}

// sessionOf reads a process's session id (field 6 of /proc/<pid>/stat).
func sessionOf(pid int) (int, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	n := 0
	for _, c := range f[3] {
		n = n*10 + int(c-'0')
	}
	return n, nil
}
