package main

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string // substring; "" => valid
	}{
		{[]string{"--backend=sim", "--state-dir=/s"}, ""},
		{[]string{"--backend=xen", "--state-dir=/s", "--listen=127.0.0.1:0", "--tls-cert=c", "--tls-key=k"}, ""},
		{[]string{"--backend=sim", "--listen=127.0.0.1:0", "--insecure-listen"}, ""},
		{[]string{}, "--backend is required"},
		{[]string{"--backend=kvm"}, `--backend "kvm"`},
		{[]string{"--backend=sim", "--listen=127.0.0.1:0"}, "--listen needs --tls-cert"},
		{[]string{"--backend=sim", "--listen=127.0.0.1:0", "--tls-cert=c"}, "both --tls-cert and --tls-key"},
		{[]string{"--backend=sim", "--tls-cert=c", "--tls-key=k"}, "need --listen"},
		{[]string{"--backend=sim", "--insecure-listen"}, "need --listen"},
		{[]string{"--backend=sim", "--listen=127.0.0.1:0", "--insecure-listen", "--tls-client-ca=x"}, "--tls-client-ca needs TLS"},
		{[]string{"--backend=sim", "--listen=8080", "--insecure-listen"}, "HOST:PORT"},
		{[]string{"--backend=sim", "--workers=0"}, "--workers 0"},
		{[]string{"--backend=sim", "--log-level=loud"}, "--log-level"},
		{[]string{"--backend=sim", "--log-format=xml"}, "--log-format"},
		{[]string{"--backend=sim", "--drain-timeout=-1s"}, "--drain-timeout"},
		{[]string{"--backend=xen", "--sim-dir=/x"}, "--sim-dir is only for"},
		{[]string{"--backend=sim", "extra"}, "unexpected argument"},
		{[]string{"--backend=sim", "--socket="}, "--socket must not be empty"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := parseFlags(tt.args, io.Discard)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
	c, err := parseFlags([]string{"--backend=sim", "--state-dir=/s"}, io.Discard)
	if err != nil || c.simDir != "/s/sim" || c.socket != apiv1.DefaultSocket || c.workers != domain.DefaultWorkers {
		t.Errorf("defaults: %+v, %v", c, err)
	}
}

func TestRunExitCodes(t *testing.T) {
	ctx := context.Background()
	if got := run(ctx, []string{"--backend=bogus"}, io.Discard); got != exitUsage {
		t.Errorf("bad flag: exit %d, want %d", got, exitUsage)
	}
	if _, err := os.Stat("/dev/xen/privcmd"); err == nil {
		t.Skip("this machine has /dev/xen/privcmd: the no-Xen start-up error cannot be checked")
	}
	dir := t.TempDir()
	var out strings.Builder
	got := run(ctx, []string{"--backend=xen", "--socket", filepath.Join(dir, "s.sock"), "--state-dir", filepath.Join(dir, "state")}, &out)
	if got != exitNoBackend {
		t.Errorf("--backend=xen without Xen: exit %d, want %d; output:\n%s", got, exitNoBackend, out.String())
	}
	if !strings.Contains(out.String(), "privcmd") || !strings.Contains(out.String(), "does not fall back") {
		t.Errorf("start-up error does not explain itself:\n%s", out.String())
	}
	// Nothing was started or created: no socket, no state directory.
	for _, p := range []string{filepath.Join(dir, "s.sock"), filepath.Join(dir, "state")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s exists after a failed xen start", p)
		}
	}
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run", "api.sock")
	l, cleanup, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	if di, err := os.Stat(filepath.Dir(path)); err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("parent dir: %v %v", di.Mode(), err)
	}
	// Someone listens: refuse, and leave the socket alone.
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, _, err := listenUnix(path); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("second listen on a live socket: %v", err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("live socket was disturbed: %v", err)
	}
	c.Close()
	// The listener dies without cleanup (a crash): the stale socket is replaced.
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("crash left no socket file to test with: %v", err)
	}
	l2, cleanup2, err := listenUnix(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()
	cleanup2()
	cleanup()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("cleanup left %s: %v", path, err)
	}
	// A regular file is never removed.
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := listenUnix(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listen over a regular file: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "x" {
		t.Errorf("regular file changed: %q %v", b, err)
	}
}
