package service

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/xenopsd-ng/xenopsd-ng/internal/testcert"
)

// syncBuffer is a log sink the server's goroutines may write concurrently.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// loggedCall serves the health service on l with creds and the RPC
// loggers, makes one call through a client with clientCreds, and returns
// what the loggers wrote.
func loggedCall(t *testing.T, l net.Listener, target string, creds, clientCreds credentials.TransportCredentials) string {
	t.Helper()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(UnaryLogger(log)))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	defer func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(clientCreds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(ctxT(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health check: %v", err)
	}
	return logs.String()
}

func TestCallerOnUnixSocketIsTheProcess(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	out := loggedCall(t, l, "unix://"+sock, UnixPeerCredentials(), insecure.NewCredentials())
	want := fmt.Sprintf("caller.uid=%d caller.gid=%d caller.pid=%d", os.Getuid(), os.Getgid(), os.Getpid())
	if !strings.Contains(out, want) || !strings.Contains(out, "method=/grpc.health.v1.Health/Check") {
		t.Errorf("RPC log does not name the calling process (%s):\n%s", want, out)
	}
}

func TestUnixPeerCredentialsRefuseANonSocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, _, err := UnixPeerCredentials().ServerHandshake(a); err == nil {
		t.Error("handshake on a pipe (no peer credentials) succeeded")
	}
}

func TestCallerOverTLSIsTheCertificate(t *testing.T) {
	ca := testcert.NewCA(t, t.TempDir())
	server := ca.Server(t, "daemon")
	client := ca.Client(t, "operator-alice", "alice.example")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{server.TLS(t)},
		ClientCAs: ca.Pool, ClientAuth: tls.RequireAndVerifyClientCert})
	clientCreds := credentials.NewTLS(&tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{client.TLS(t)}})
	out := loggedCall(t, l, l.Addr().String(), creds, clientCreds)
	if !strings.Contains(out, "caller.cn=operator-alice caller.san=[alice.example] caller.addr=127.0.0.1:") {
		t.Errorf("RPC log does not name the client certificate:\n%s", out)
	}
}

func TestCallerOverTLSWithoutClientCertificate(t *testing.T) {
	ca := testcert.NewCA(t, t.TempDir())
	server := ca.Server(t, "daemon")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{server.TLS(t)}})
	out := loggedCall(t, l, l.Addr().String(), creds, credentials.NewTLS(&tls.Config{RootCAs: ca.Pool}))
	if !strings.Contains(out, "caller.cert=none caller.addr=127.0.0.1:") {
		t.Errorf("RPC log does not say the client had no certificate:\n%s", out)
	}
}

func TestCallerUnknownWithoutPeer(t *testing.T) {
	if a := callerAttr(context.Background()); a.Value.String() != "unknown (no peer)" {
		t.Errorf("caller without a peer: %v", a)
	}
}
