package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/defaults"

	"github.com/xenopsd-ng/xenopsd-ng/console"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/internal/bytesize"
	"github.com/xenopsd-ng/xenopsd-ng/simhost"
)

// Defaults.
const (
	defaultStateDir     = "/var/lib/xenopsd-ng"
	defaultDrainTimeout = 30 * time.Second
	// defaultMemoryLimit suits a 1 GiB dom0: the idle daemon needs a few
	// MiB, and builds queue for the rest (see --memory-limit). It admits one
	// distribution bzImage at a time (Debian's 6.1 kernel expands to about
	// 66 MB, which the budget counts three times); 64M holds the daemon
	// under 64 MiB resident but admits only uncompressed (ELF) kernels and
	// small compressed ones.
	defaultMemoryLimit = 256 << 20
)

var errHelp = errors.New("help requested")

// config is the daemon's parsed command line.
type config struct {
	backend        string
	socket         string
	stateDir       string
	simDir         string
	consoleLogDir  string
	listen         string
	tlsCert        string
	tlsKey         string
	tlsClientCA    string
	insecureListen bool
	// anyClient: serve TLS without verifying client certificates
	// (--insecure-no-client-cert); warned about at start-up.
	anyClient bool
	// metricsListen serves /metrics over HTTP there (plaintext on loopback
	// only), over HTTPS with metricsTLSCert and metricsTLSKey.
	metricsListen  string
	metricsTLSCert string
	metricsTLSKey  string
	// pprof serves Go's profiles at /debug/pprof/ on the metrics listener,
	// which must then be plaintext on loopback.
	pprof        bool
	workers      int
	logLevel     slog.Level
	logFormat    string
	drainTimeout time.Duration
	// memoryLimit is the daemon's memory budget in bytes (0: none): the Go
	// runtime's soft limit, and the memory that builds may hold at once
	// for decompressed kernels.
	memoryLimit uint64
	showVersion bool
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("xenopsd-ng", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.backend, "backend", "", "hypervisor backend: sim (simulated machine) or xen (/dev/xen/privcmd) (required)")
	fs.StringVar(&c.socket, "socket", defaults.Socket, "unix socket of the gRPC API (created mode 0600)")
	fs.StringVar(&c.stateDir, "state-dir", defaultStateDir, "directory of the daemon's database")
	fs.StringVar(&c.simDir, "sim-dir", "", "sim backend: the simulated machine's directory (default <state-dir>/sim)")
	fs.StringVar(&c.consoleLogDir, "console-log-dir", "", "directory of the guest console logs (guest-<name>.log) StreamConsole serves (default: /var/log/xen/console for xen, <sim-dir>/console for sim)")
	fs.StringVar(&c.listen, "listen", "", "also serve the API on this TCP HOST:PORT (needs --tls-cert and --tls-key)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "PEM certificate for --listen")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM private key for --listen")
	fs.StringVar(&c.tlsClientCA, "tls-client-ca", "", "PEM CA bundle: require --listen clients to present a certificate it signed")
	fs.BoolVar(&c.anyClient, "insecure-no-client-cert", false, "serve --listen over TLS without --tls-client-ca: any client that reaches the port controls the host")
	fs.BoolVar(&c.insecureListen, "insecure-listen", false, "allow --listen without TLS (testing; only on a loopback address)")
	fs.StringVar(&c.metricsListen, "metrics-listen", "", "serve Prometheus/OpenMetrics metrics at http://HOST:PORT/metrics (plaintext on a loopback HOST only, else needs --metrics-tls-cert and --metrics-tls-key)")
	fs.StringVar(&c.metricsTLSCert, "metrics-tls-cert", "", "PEM certificate: serve --metrics-listen over HTTPS")
	fs.StringVar(&c.metricsTLSKey, "metrics-tls-key", "", "PEM private key for --metrics-tls-cert")
	fs.BoolVar(&c.pprof, "pprof", false, "also serve Go's runtime profiles at /debug/pprof/ on --metrics-listen (a loopback plaintext listener only)")
	fs.IntVar(&c.workers, "workers", domain.DefaultWorkers, "size of the worker pool running VM operations")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", defaultDrainTimeout, "on SIGTERM, how long in-flight tasks may run before they are recorded as interrupted")
	c.memoryLimit = defaultMemoryLimit
	fs.Var((*byteSize)(&c.memoryLimit), "memory-limit", "the daemon's memory budget, e.g. 64M or 1G (0: none): the Go runtime's soft memory limit, and "+
		"the memory builds may hold at once for decompressed kernels (builds wait for their share; a kernel that needs more than all of it is refused)")
	fs.BoolVar(&c.showVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, errHelp
		}
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q (the only subcommand is sim-host)", fs.Arg(0))
	}
	if c.showVersion {
		return c, nil
	}
	if err := c.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return c, fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)
	}
	switch c.backend {
	case "sim", "xen":
	case "":
		return c, errors.New("--backend is required: sim or xen")
	default:
		return c, fmt.Errorf("--backend %q: want sim or xen", c.backend)
	}
	if c.socket == "" {
		return c, errors.New("--socket must not be empty")
	}
	if c.stateDir == "" {
		return c, errors.New("--state-dir must not be empty")
	}
	if c.simDir == "" {
		c.simDir = filepath.Join(c.stateDir, "sim")
	}
	if c.consoleLogDir == "" {
		c.consoleLogDir = console.DefaultXenDir
		if c.backend == "sim" {
			c.consoleLogDir = filepath.Join(c.simDir, simhost.ConsoleDir)
		}
	}
	if c.backend == "xen" && isSet(fs, "sim-dir") {
		return c, errors.New("--sim-dir is only for --backend=sim")
	}
	if c.workers < 1 || c.workers > 4096 {
		return c, fmt.Errorf("--workers %d: want 1..4096", c.workers)
	}
	if c.drainTimeout < 0 {
		return c, fmt.Errorf("--drain-timeout %v: must not be negative", c.drainTimeout)
	}
	switch c.logFormat {
	case "text", "json":
	default:
		return c, fmt.Errorf("--log-format %q: want text or json", c.logFormat)
	}
	if err := checkListen(c); err != nil {
		return c, err
	}
	if c.insecureListen {
		ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
		defer cancel()
		addr, err := loopbackOnly(ctx, net.DefaultResolver, apiPlaintext, c.listen)
		if err != nil {
			return c, err
		}
		c.listen = addr
	}
	if err := checkMetricsListen(c); err != nil {
		return c, err
	}
	if c.metricsListen != "" && c.metricsTLSCert == "" {
		ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
		defer cancel()
		addr, err := loopbackOnly(ctx, net.DefaultResolver, metricsPlaintext, c.metricsListen)
		if err != nil {
			return c, err
		}
		c.metricsListen = addr
	}
	return c, nil
}

// checkMetricsListen checks that the metrics listener is plaintext (and
// then must be on loopback, which parseFlags checks next) or HTTPS with
// both a certificate and a key.
func checkMetricsListen(c config) error {
	hasTLS := c.metricsTLSCert != "" || c.metricsTLSKey != ""
	switch {
	case c.metricsListen == "" && hasTLS:
		return errors.New("--metrics-tls-cert and --metrics-tls-key need --metrics-listen")
	case c.pprof && (c.metricsListen == "" || hasTLS):
		return errors.New("--pprof needs --metrics-listen on a loopback address without TLS (profiles are for the host's own operators)")
	case c.metricsListen == "":
		return nil
	case hasTLS && (c.metricsTLSCert == "" || c.metricsTLSKey == ""):
		return errors.New("--metrics-listen with TLS needs both --metrics-tls-cert and --metrics-tls-key")
	}
	if _, _, err := net.SplitHostPort(c.metricsListen); err != nil {
		return fmt.Errorf("--metrics-listen %q: want HOST:PORT", c.metricsListen)
	}
	return nil
}

// checkListen checks that the --listen flags make one of three listeners:
// TLS with client certificates checked against --tls-client-ca, TLS that
// lets any client in (--insecure-no-client-cert, said explicitly), or
// plaintext on loopback (--insecure-listen, for tests).
func checkListen(c config) error {
	hasTLS := c.tlsCert != "" || c.tlsKey != ""
	switch {
	case c.listen == "" && (hasTLS || c.tlsClientCA != "" || c.insecureListen || c.anyClient):
		return errors.New("--tls-cert, --tls-key, --tls-client-ca, --insecure-no-client-cert and --insecure-listen need --listen")
	case c.listen == "":
		return nil
	case hasTLS && (c.tlsCert == "" || c.tlsKey == ""):
		return errors.New("--listen with TLS needs both --tls-cert and --tls-key")
	case hasTLS && c.insecureListen:
		return errors.New("--insecure-listen contradicts --tls-cert/--tls-key")
	case !hasTLS && !c.insecureListen:
		return errors.New("--listen needs --tls-cert and --tls-key (or --insecure-listen to serve plaintext on loopback, for tests)")
	case c.insecureListen && c.tlsClientCA != "":
		return errors.New("--tls-client-ca needs TLS, not --insecure-listen")
	case c.insecureListen && c.anyClient:
		return errors.New("--insecure-no-client-cert is for TLS listeners; --insecure-listen has no TLS at all")
	case hasTLS && c.tlsClientCA != "" && c.anyClient:
		return errors.New("--insecure-no-client-cert contradicts --tls-client-ca")
	case hasTLS && c.tlsClientCA == "" && !c.anyClient:
		return errors.New("--listen with TLS needs --tls-client-ca (clients must present a certificate it signed); " +
			"to let any client that reaches the port in, say so with --insecure-no-client-cert")
	}
	if _, _, err := net.SplitHostPort(c.listen); err != nil {
		return fmt.Errorf("--listen %q: want HOST:PORT", c.listen)
	}
	return nil
}

func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func newLogger(c config, w io.Writer) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: c.logLevel}
	if c.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// byteSize is a flag value of bytes, as xopsctl's sizes: a number with
// an optional K, M, G or T suffix (binary; see bytesize.Parse).
type byteSize uint64

func (b *byteSize) String() string { return bytesize.Format(uint64(*b)) }

func (b *byteSize) Set(s string) error {
	n, err := bytesize.Parse(s)
	if err != nil {
		return err
	}
	*b = byteSize(n)
	return nil
}
