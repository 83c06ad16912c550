package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// stateLockFile, in the state directory, is flocked by the daemon using it
// and holds that daemon's pid.
const stateLockFile = "xenopsd-ng.lock"

// lockStateDir takes the state directory for this daemon, creating it if
// missing: two daemons on one database and one sim host would each act on
// the other's domains. A directory in use is an error that names the
// process holding it. The lock goes with the process, however it ends.
func lockStateDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("--state-dir: %w", err)
	}
	path := filepath.Join(dir, stateLockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--state-dir: lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("--state-dir %s is in use by %s (lock %s)", dir, lockHolder(path), path)
		}
		return nil, fmt.Errorf("--state-dir: lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("--state-dir: write lock file: %w", err)
	}
	return func() { f.Close() }, nil
}

// lockHolder describes the process whose pid the lock file holds: its pid
// and, if readable, its command line.
func lockHolder(path string) string {
	b, err := os.ReadFile(path)
	pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || perr != nil || pid <= 0 {
		return "another process (its pid is not recorded yet)"
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(cmd) == 0 {
		return fmt.Sprintf("pid %d", pid)
	}
	args := strings.Join(strings.Split(string(bytes.TrimRight(cmd, "\x00")), "\x00"), " ")
	return fmt.Sprintf("pid %d (%s)", pid, args)
}
