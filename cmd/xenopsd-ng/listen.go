package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"google.golang.org/grpc/credentials"
)

// listenUnix listens on the API socket at path, mode 0600, creating its
// parent directory (0700) if missing. An existing socket file is removed only
// when nothing answers on it (a stale socket from a crash); a live one or a
// file that is not a socket is an error. The socket is bound under a
// temporary name, restricted to 0600 and then renamed into place, so it is
// never reachable with looser permissions. The returned cleanup removes it.
func listenUnix(path string) (net.Listener, func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, nil, fmt.Errorf("socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, nil, fmt.Errorf("--socket %s exists and is not a socket; not removing it", path)
		}
		if c, err := net.DialTimeout("unix", path, 2*time.Second); err == nil {
			c.Close()
			return nil, nil, fmt.Errorf("--socket %s: another process is serving on it (is xenopsd-ng already running?)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, nil, fmt.Errorf("remove stale socket: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("--socket %s: %w", path, err)
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp"+strconv.Itoa(os.Getpid()))
	_ = os.Remove(tmp)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, nil, fmt.Errorf("chmod socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, nil, fmt.Errorf("move socket into place: %w", err)
	}
	return l, func() { _ = os.Remove(path) }, nil
}

// resolveTimeout bounds the look-up of the --listen host name.
const resolveTimeout = 10 * time.Second

// resolver looks host names up; *net.Resolver is one.
type resolver interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
}

// plaintextListener names, for loopbackOnly's errors, a flag that serves
// plaintext on loopback only.
type plaintextListener struct {
	flag   string // the address flag, e.g. "--listen"
	reason string // why it must be loopback, e.g. "--insecure-listen"
	tls    string // the flags that would allow any address
}

var (
	apiPlaintext     = plaintextListener{"--listen", "--insecure-listen", "--tls-cert, --tls-key and --tls-client-ca"}
	metricsPlaintext = plaintextListener{"--metrics-listen", "--metrics-listen without TLS", "--metrics-tls-cert and --metrics-tls-key"}
)

// loopbackOnly checks that the plaintext address hostPort of the listener p
// is on loopback: its host must be a loopback IP or a name that resolves to
// loopback addresses only (an empty host means every interface). It returns
// HOST:PORT with the host replaced by the first address it resolved to, so
// the listener binds exactly the address that was checked.
func loopbackOnly(ctx context.Context, r resolver, p plaintextListener, hostPort string) (string, error) {
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		return "", fmt.Errorf("%s %q: want HOST:PORT", p.flag, hostPort)
	}
	if host == "" {
		return "", fmt.Errorf("%s: %s %q has no host, so it listens on every interface; plaintext is only allowed on loopback (e.g. 127.0.0.1:%s)", p.reason, p.flag, hostPort, port)
	}
	addrs, err := r.LookupIPAddr(ctx, host)
	if err != nil {
		return "", fmt.Errorf("%s: cannot resolve %s host %q to check that it is loopback: %w", p.reason, p.flag, host, err)
	}
	if len(addrs) == 0 {
		return "", fmt.Errorf("%s: %s host %q resolves to no address", p.reason, p.flag, host)
	}
	for _, a := range addrs {
		if !a.IP.IsLoopback() {
			return "", fmt.Errorf("%s: %s host %q is %s, not a loopback address; plaintext is only allowed on loopback (use TLS with %s)", p.reason, p.flag, host, a.IP, p.tls)
		}
	}
	return net.JoinHostPort(addrs[0].IP.String(), port), nil
}

// serverTLS builds the TLS credentials of the TCP listener. Without a
// client CA (only with --insecure-no-client-cert, see checkListen) it warns:
// anyone who reaches the port may drive the host.
func serverTLS(cfg config, log *slog.Logger) (credentials.TransportCredentials, error) {
	cert, err := tls.LoadX509KeyPair(cfg.tlsCert, cfg.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if cfg.tlsClientCA != "" {
		pem, err := os.ReadFile(cfg.tlsClientCA)
		if err != nil {
			return nil, fmt.Errorf("--tls-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-client-ca %s: no PEM certificate in it", cfg.tlsClientCA)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	} else {
		log.Warn("the TLS listener does not verify client certificates (--insecure-no-client-cert): any client that reaches it controls this host",
			"listen", cfg.listen)
	}
	return credentials.NewTLS(tc), nil
}
