package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/defaults"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/internal/testcert"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string // substring; "" => valid
	}{
		{[]string{"--backend=sim", "--state-dir=/s"}, ""},
		{[]string{"--backend=xen", "--state-dir=/s", "--listen=0.0.0.0:0", "--tls-cert=c", "--tls-key=k", "--tls-client-ca=ca"}, ""},
		{[]string{"--backend=xen", "--state-dir=/s", "--listen=:0", "--tls-cert=c", "--tls-key=k", "--insecure-no-client-cert"}, ""},
		{[]string{"--backend=sim", "--listen=127.0.0.1:0", "--insecure-listen"}, ""},
		{[]string{"--backend=sim", "--listen=127.1.2.3:0", "--insecure-listen"}, ""},
		{[]string{"--backend=sim", "--listen=[::1]:0", "--insecure-listen"}, ""},
		{[]string{"--backend=sim", "--listen=0.0.0.0:0", "--insecure-listen"}, "--insecure-listen: --listen host \"0.0.0.0\" is 0.0.0.0, not a loopback address"},
		{[]string{"--backend=sim", "--listen=[::]:0", "--insecure-listen"}, "not a loopback address"},
		{[]string{"--backend=sim", "--listen=192.0.2.1:0", "--insecure-listen"}, "not a loopback address"},
		{[]string{"--backend=sim", "--listen=:8080", "--insecure-listen"}, "every interface"},
		{[]string{"--backend=sim", "--listen=127.0.0.1:0", "--tls-cert=c", "--tls-key=k"}, "needs --tls-client-ca"},
		{[]string{"--backend=sim", "--listen=127.0.0.1:0", "--tls-cert=c", "--tls-key=k", "--tls-client-ca=ca", "--insecure-no-client-cert"}, "contradicts --tls-client-ca"},
		{[]string{"--backend=sim", "--listen=127.0.0.1:0", "--insecure-listen", "--insecure-no-client-cert"}, "no TLS at all"},
		{[]string{"--backend=sim", "--insecure-no-client-cert"}, "need --listen"},
		{[]string{}, "--backend is required"},
		{[]string{"--backend=kvm"}, `--backend "kvm"`},
		{[]string{"--backend=sim", "--listen=127.0.0.1:0"}, "--listen needs --tls-cert"},
		{[]string{"--backend=sim", "--listen=127.0.0.1:0", "--tls-cert=c", "--tls-client-ca=ca"}, "both --tls-cert and --tls-key"},
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
	if err != nil || c.simDir != "/s/sim" || c.socket != defaults.Socket || c.workers != domain.DefaultWorkers {
		t.Errorf("defaults: %+v, %v", c, err)
	}
}

// fakeResolver answers host look-ups from a table.
type fakeResolver map[string][]string

func (f fakeResolver) LookupIPAddr(_ context.Context, host string) ([]net.IPAddr, error) {
	ips, ok := f[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var out []net.IPAddr
	for _, ip := range ips {
		out = append(out, net.IPAddr{IP: net.ParseIP(ip)})
	}
	return out, nil
}

func TestInsecureListenOnlyOnLoopback(t *testing.T) {
	r := fakeResolver{
		"localhost":  {"127.0.0.1", "::1"},
		"myhost":     {"127.0.1.1"},
		"dual":       {"127.0.0.1", "198.51.100.7"},
		"public":     {"198.51.100.7"},
		"127.0.0.1":  {"127.0.0.1"},
		"0.0.0.0":    {"0.0.0.0"},
		"empty-name": {},
	}
	tests := []struct{ addr, want, wantErr string }{
		{"localhost:7000", "127.0.0.1:7000", ""},
		{"myhost:7000", "127.0.1.1:7000", ""},
		{"127.0.0.1:0", "127.0.0.1:0", ""},
		{"dual:7000", "", `--listen host "dual" is 198.51.100.7, not a loopback address`},
		{"public:7000", "", "not a loopback address"},
		{"0.0.0.0:7000", "", "not a loopback address"},
		{":7000", "", "every interface"},
		{"nosuchhost:7000", "", `cannot resolve --listen host "nosuchhost"`},
		{"empty-name:7000", "", "resolves to no address"},
		{"7000", "", "HOST:PORT"},
	}
	for _, tt := range tests {
		got, err := loopbackOnly(context.Background(), r, apiPlaintext, tt.addr)
		switch {
		case tt.wantErr == "" && (err != nil || got != tt.want):
			t.Errorf("%s: %q, %v; want %q", tt.addr, got, err, tt.want)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "--")):
			t.Errorf("%s: %q, %v; want an error containing %q", tt.addr, got, err, tt.wantErr)
		}
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

func TestServerTLSWarnsWithoutClientCA(t *testing.T) {
	dir := t.TempDir()
	ca := testcert.NewCA(t, dir)
	server := ca.Server(t, "daemon")
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	cfg := config{listen: "127.0.0.1:0", tlsCert: server.CertFile, tlsKey: server.KeyFile, tlsClientCA: ca.File}
	if _, err := serverTLS(cfg, log); err != nil || logs.Len() != 0 {
		t.Fatalf("with a client CA: %v, logged %q", err, logs.String())
	}
	cfg.tlsClientCA, cfg.anyClient = "", true
	if _, err := serverTLS(cfg, log); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "--insecure-no-client-cert") {
		t.Errorf("no start-up warning for a TLS listener without client certificates: %q", logs.String())
	}
}

// TestMemoryLimitFlag: --memory-limit takes bytes with a binary unit (as
// xopsctl's sizes), defaults to 256 MiB, and 0 means no limit.
func TestMemoryLimitFlag(t *testing.T) {
	for _, tt := range []struct {
		arg  string // "-" => the flag is not given
		want uint64
		err  string
	}{
		{"-", 256 << 20, ""},
		{"0", 0, ""},
		{"1048576", 1 << 20, ""},
		{"512K", 512 << 10, ""},
		{"96MiB", 96 << 20, ""},
		{"96mb", 96 << 20, ""},
		{"1G", 1 << 30, ""},
		{"1.5G", 3 << 29, ""},
		{"1T", 1 << 40, ""},
		{"", 0, "empty size"},
		{"-1M", 0, "negative"},
		{"MiB", 0, "no number"},
		{"lots", 0, "not a size"},
		{"20000000T", 0, "too large"},
	} {
		args := []string{"--backend=sim"}
		if tt.arg != "-" {
			args = append(args, "--memory-limit="+tt.arg)
		}
		c, err := parseFlags(args, io.Discard)
		switch {
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), "memory-limit")):
			t.Errorf("--memory-limit=%s: %v, want an error naming the flag and containing %q", tt.arg, err, tt.err)
		case tt.err == "" && (err != nil || c.memoryLimit != tt.want):
			t.Errorf("--memory-limit=%s: %d, %v, want %d", tt.arg, c.memoryLimit, err, tt.want)
		}
	}
}
