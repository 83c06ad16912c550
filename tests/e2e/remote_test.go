package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/internal/testcert"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
)

// refusedStart runs the daemon on d's directories with args and expects it
// to refuse to start: exit status 2 (a bad command line) within 30 s, with
// every string of want in what it printed. A daemon that starts serving
// instead is killed at the bound (and its sim host stopped at cleanup).
func refusedStart(t *testing.T, d *harness.Daemon, bin *harness.Binaries, want []string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin.Daemon, append([]string{"--backend=sim", "--socket", d.Socket, "--state-dir", d.StateDir}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if ctx.Err() != nil || !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("xenopsd-ng %s: %v (deadline: %v), want exit 2; output:\n%s", strings.Join(args, " "), err, ctx.Err(), out.String())
	}
	for _, w := range want {
		if !strings.Contains(out.String(), w) {
			t.Errorf("xenopsd-ng %s: the error does not say %q:\n%s", strings.Join(args, " "), w, out.String())
		}
	}
}

// TestRemoteListenerRefusals: plaintext only on loopback, and TLS without
// client certificates only when asked for by name.
func TestRemoteListenerRefusals(t *testing.T) {
	bin := binaries(t)
	d := harness.NewDaemon(t, bin)
	ca := testcert.NewCA(t, d.Dir)
	server := ca.Server(t, "daemon")
	refusedStart(t, d, bin, []string{"--insecure-listen", "0.0.0.0", "not a loopback address"},
		"--listen", "0.0.0.0:0", "--insecure-listen")
	refusedStart(t, d, bin, []string{"--insecure-listen", "every interface"},
		"--listen", ":0", "--insecure-listen")
	refusedStart(t, d, bin, []string{"--tls-client-ca", "--insecure-no-client-cert"},
		"--listen", "127.0.0.1:0", "--tls-cert", server.CertFile, "--tls-key", server.KeyFile)

	// Asked for by name, it starts, with a warning.
	d.Args = []string{"--listen", "127.0.0.1:0", "--tls-cert", server.CertFile, "--tls-key", server.KeyFile, "--insecure-no-client-cert"}
	d.Start()
	if log := d.Log(); !regexp.MustCompile(`level=WARN msg="the TLS listener does not verify client certificates`).MatchString(log) {
		t.Errorf("no start-up warning for TLS without client certificates:\n%s", log)
	}
}

// TestRPCLogsNameTheCaller: every RPC log line says who called: the uid and
// pid on the unix socket, the client certificate's subject over TLS.
func TestRPCLogsNameTheCaller(t *testing.T) {
	bin := binaries(t)
	d := harness.NewDaemon(t, bin)
	ca := testcert.NewCA(t, d.Dir)
	server, client := ca.Server(t, "daemon"), ca.Client(t, "operator-alice", "alice.example")
	d.Args = []string{"--log-level", "debug", "--listen", "127.0.0.1:0",
		"--tls-cert", server.CertFile, "--tls-key", server.KeyFile, "--tls-client-ca", ca.File}
	d.Start()
	m := regexp.MustCompile(`msg="serving the xenopsd.v1 API" addr=(127\.0\.0\.1:\d+)`).FindStringSubmatch(d.Log())
	if m == nil {
		t.Fatalf("the daemon log does not say which TCP port it serves:\n%s", d.Log())
	}
	cli(t, d, "host", "info")
	// Over TLS, the same binary (the unix socket is not used: --address wins).
	r := harness.RunCLI(t, bin, "/nonexistent", "--address", m[1], "--tls-ca", ca.File,
		"--tls-cert", client.CertFile, "--tls-key", client.KeyFile, "vm", "list")
	if r.Code != 0 {
		t.Fatalf("xopsctl over TLS: exit %d: %s", r.Code, r.Stderr)
	}

	unixCall := regexp.MustCompile(fmt.Sprintf(`method=/xenopsd.v1.HostService/GetHost caller.uid=%d caller.gid=%d caller.pid=\d+ code=OK`,
		os.Getuid(), os.Getgid()))
	tlsCall := regexp.MustCompile(`method=/xenopsd.v1.VMService/ListVMs caller.cn=operator-alice caller.san=\[alice.example\] caller.addr=127\.0\.0\.1:\d+ code=OK`)
	log := d.Log()
	if !unixCall.MatchString(log) {
		t.Errorf("no RPC log line naming the unix socket caller (%s):\n%s", unixCall, log)
	}
	if !tlsCall.MatchString(log) {
		t.Errorf("no RPC log line naming the TLS client certificate (%s):\n%s", tlsCall, log)
	}
}
