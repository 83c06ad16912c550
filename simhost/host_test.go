package simhost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/xenctrltest"
)

// TestMain lets the test binary act as the sim host command that Ensure
// starts: `<test binary> sim-host --dir DIR ...`.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "sim-host" {
		if err := RunCommand(context.Background(), os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "sim-host:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	// `<test binary> ensure-and-exit DIR`: a short-lived "daemon" that
	// starts a host with Ensure and exits at once.
	if len(os.Args) == 3 && os.Args[1] == "ensure-and-exit" {
		dir := os.Args[2]
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		c, err := Ensure(ctx, dir, []string{os.Args[0], "sim-host", "--dir", dir, "--idle-timeout", "5m"})
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "ensure:", err)
			os.Exit(1)
		}
		c.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// startHost runs a sim host in-process on a fresh directory and stops it
// when the test ends.
func startHost(t testing.TB, cfg Config) (*Client, Config) {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if cfg.TotalMemory == 0 {
		cfg.TotalMemory = 4 << 30
	}
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), cfg) }()
	c := dialUntil(t, cfg.Dir, done)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Stop(ctx); err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("Stop: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-ctx.Done():
			t.Errorf("sim host did not exit")
		}
	})
	return c, cfg
}

func dialUntil(t testing.TB, dir string, done <-chan error) *Client {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := Dial(testCtx(t), dir)
		if err == nil {
			return c
		}
		select {
		case rerr := <-done:
			t.Fatalf("Run returned before answering: %v", rerr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sim host never answered: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestContractOverSocket(t *testing.T) {
	c, _ := startHost(t, Config{})
	xenctrltest.RunContract(t, c)
}

func TestErrnoCrossesSocket(t *testing.T) {
	c, _ := startHost(t, Config{})
	ctx := testCtx(t)
	_, err := c.DomainInfo(ctx, 4242)
	var xe *xenctrl.Error
	if !errors.Is(err, syscall.ESRCH) || !errors.As(err, &xe) || xe.Op != "domctl getdomaininfo" || xe.Domid != 4242 {
		t.Fatalf("DomainInfo(4242) = %v (%#v), want *xenctrl.Error ESRCH", err, xe)
	}
	_, err = c.CreateDomain(ctx, xenctrl.DomainConfig{Flags: xenctrl.CreateHAP, MaxVCPUs: 1})
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("HAP without HVM: %v, want EINVAL", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.ListDomains(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("ListDomains on a cancelled context: %v", err)
	}
	if c.Kind() != "sim" || c.XenstoredPath() != filepath.Join(c.Dir(), XenstoredSocket) {
		t.Fatalf("Kind %q XenstoredPath %q", c.Kind(), c.XenstoredPath())
	}
}

func TestOneHostPerDir(t *testing.T) {
	_, cfg := startHost(t, Config{})
	err := Run(testCtx(t), Config{Dir: cfg.Dir})
	if err == nil {
		t.Fatal("a second host started on the same directory")
	}
	// The first is unharmed.
	c, err := Dial(testCtx(t), cfg.Dir)
	if err != nil {
		t.Fatalf("first host no longer answers: %v", err)
	}
	c.Close()
}

func TestHostRestartLosesDomains(t *testing.T) {
	dir := t.TempDir()
	ctx := testCtx(t)
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), Config{Dir: dir}) }()
	c := dialUntil(t, dir, done)
	defer c.Close()
	boot1 := c.BootID()
	d, err := c.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, f := range []string{HypervisorSocket, XenstoredSocket, PIDFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind after stop: %v", f, err)
		}
	}
	if _, err := c.ListDomains(ctx); err == nil {
		t.Fatal("call succeeded with no host running")
	}
	// "Power on" again: same directory, fresh machine. The old client
	// reconnects by itself.
	_, _ = startHost(t, Config{Dir: dir})
	doms, err := c.ListDomains(ctx)
	if err != nil {
		t.Fatalf("ListDomains after restart: %v", err)
	}
	if len(doms) != 1 || doms[0].Domid != 0 {
		t.Fatalf("after restart %+v, want only dom0 (domain %d died with the host)", doms, d)
	}
	if c.BootID() == boot1 {
		t.Fatal("boot id unchanged across a restart")
	}
}

func TestIdleTimeoutExitsAndLogs(t *testing.T) {
	var buf syncBuffer
	dir := t.TempDir()
	cfg := Config{Dir: dir, IdleTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(&buf, nil))}
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), cfg) }()
	// A client connected keeps it alive across several idle periods...
	c := dialUntil(t, dir, done)
	for i := 0; i < 5; i++ {
		if _, err := c.ListDomains(testCtx(t)); err != nil {
			t.Fatalf("host went away with a client connected: %v", err)
		}
		time.Sleep(cfg.IdleTimeout / 3)
	}
	// ...and once it leaves, the host exits by itself.
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("idle host did not exit")
	}
	if !bytes.Contains(buf.Bytes(), []byte("idle timeout")) {
		t.Fatalf("idle exit not logged:\n%s", buf.Bytes())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}

func TestEnsureStartsDetachedHost(t *testing.T) {
	dir := t.TempDir()
	ctx := testCtx(t)
	cmd := []string{os.Args[0], "sim-host", "--dir", dir, "--memory", "2G", "--cpus", "2", "--idle-timeout", "5m"}
	c, err := Ensure(ctx, dir, cmd)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Stop(sctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	pid := c.PID()
	if pid == os.Getpid() || pid <= 0 || !c.Started() {
		t.Fatalf("host pid %d, started by Ensure %v", pid, c.Started())
	}
	sid, err := unix.Getsid(pid)
	if err != nil || sid != pid {
		t.Fatalf("host %d is in session %d (%v), want its own", pid, sid, err)
	}
	pi, err := c.PhysInfo(ctx)
	if err != nil || pi.NrCPUs != 2 || pi.TotalPages != 2<<30/xenctrl.PageSize {
		t.Fatalf("PhysInfo = %+v, %v; want the flags' 2 CPUs and 2 GiB", pi, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, PIDFile))
	if err != nil || string(b) != fmt.Sprintf("%d\n", pid) {
		t.Fatalf("pid file %q, %v", b, err)
	}
	// A second Ensure finds the running host instead of starting another.
	c2, err := Ensure(ctx, dir, cmd)
	if err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
	defer c2.Close()
	if c2.PID() != pid || c2.Started() {
		t.Fatalf("second Ensure reached pid %d (started it: %v), want the running %d", c2.PID(), c2.Started(), pid)
	}
}

func TestHostOutlivesItsStarterAndStopsOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	ctx := testCtx(t)
	out, err := exec.CommandContext(ctx, os.Args[0], "ensure-and-exit", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("starter: %v\n%s", err, out)
	}
	// The starter is gone; the host it started is not.
	c, err := Dial(ctx, dir)
	if err != nil {
		t.Fatalf("host died with its starter: %v", err)
	}
	defer c.Close()
	d, err := c.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	pid := c.PID()
	if err := unix.Kill(pid, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, PIDFile)); errors.Is(err, os.ErrNotExist) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("host %d did not exit on SIGTERM", pid)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if _, err := c.DomainInfo(ctx, d); err == nil {
		t.Fatal("domain still answers after its host exited")
	}
	// The log ends with a clean stop.
	for {
		log, _ := os.ReadFile(filepath.Join(dir, LogFile))
		if bytes.Contains(log, []byte("simhost: stopped")) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("host log lacks a clean stop:\n%s", log)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func TestEnsureReplacesKilledHost(t *testing.T) {
	dir := t.TempDir()
	ctx := testCtx(t)
	cmd := []string{os.Args[0], "sim-host", "--dir", dir, "--idle-timeout", "5m"}
	c, err := Ensure(ctx, dir, cmd)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	defer c.Close()
	pid, boot := c.PID(), c.BootID()
	if _, err := c.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1}); err != nil {
		t.Fatal(err)
	}
	// kill -9: stale sockets and pid file stay behind, the flock goes.
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for {
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("host %d survived SIGKILL", pid)
		case <-time.After(5 * time.Millisecond):
		}
	}
	c2, err := Ensure(ctx, dir, cmd)
	if err != nil {
		t.Fatalf("Ensure after the host was killed: %v", err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c2.Stop(sctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	if c2.PID() == pid || c2.BootID() == boot {
		t.Fatalf("Ensure reached the killed host (pid %d)", pid)
	}
	doms, err := c2.ListDomains(ctx)
	if err != nil || len(doms) != 1 {
		t.Fatalf("new host lists %+v, %v; want only dom0", doms, err)
	}
}

func TestEnsureReportsFailedStart(t *testing.T) {
	dir := t.TempDir()
	_, err := Ensure(testCtx(t), dir, []string{os.Args[0], "sim-host", "--dir", dir, "--cpus", "0"})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("--cpus")) {
		t.Fatalf("Ensure with a failing command: %v; want the log's complaint about --cpus", err)
	}
	if _, err := Ensure(testCtx(t), dir, nil); err == nil {
		t.Fatal("Ensure with no command and no host succeeded")
	}
}

func TestConcurrentClients(t *testing.T) {
	c, cfg := startHost(t, Config{})
	ctx := testCtx(t)
	const workers, each = 16, 50
	var mu sync.Mutex
	seen := map[xenctrl.Domid]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			cl := c
			if w%2 == 1 { // half the workers on their own connection
				var err error
				if cl, err = Dial(ctx, cfg.Dir); err != nil {
					errs <- err
					return
				}
				defer cl.Close()
			}
			for i := 0; i < each; i++ {
				d, err := cl.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				dup := seen[d]
				seen[d] = true
				mu.Unlock()
				if dup {
					errs <- fmt.Errorf("domid %d handed out twice", d)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	doms, err := c.ListDomains(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(doms) != workers*each+1 {
		t.Fatalf("%d domains listed, want %d", len(doms), workers*each+1)
	}
}
