package main

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/internal/testcert"
)

func TestRemoteTLS(t *testing.T) {
	ca := testcert.NewCA(t, t.TempDir())
	server := ca.Server(t, "xenopsd-ng test")
	cert, certFile := server.TLS(t), server.CertFile
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
	apiv1.RegisterHostServiceServer(srv, &fakeServer{})
	go srv.Serve(l)
	defer srv.Stop()
	addr := l.Addr().String()

	out, errOut, code := xops(t, "/nonexistent", "--address", addr, "--tls-ca", ca.File, "host", "info")
	if code != 0 || !strings.Contains(out, "4.17.3") {
		t.Errorf("over TLS: exit %d\n%s%s", code, out, errOut)
	}
	// Without the CA the daemon's certificate is not trusted.
	_, errOut, code = xops(t, "/nonexistent", "--address", addr, "--timeout", "5s", "host", "info")
	if code != 1 || !strings.Contains(errOut, "UNAVAILABLE") {
		t.Errorf("untrusted certificate: exit %d, stderr %q", code, errOut)
	}
	_, errOut, code = xops(t, "/nonexistent", "--address", addr, "--tls-cert", certFile, "host", "info")
	if code != 2 || !strings.Contains(errOut, "--tls-key") {
		t.Errorf("--tls-cert alone: exit %d, stderr %q", code, errOut)
	}
}

func TestRemoteInsecure(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	apiv1.RegisterHostServiceServer(srv, &fakeServer{})
	go srv.Serve(l)
	defer srv.Stop()
	out, errOut, code := xops(t, "/nonexistent", "--address", l.Addr().String(), "--insecure", "host", "info", "-o", "yaml")
	if code != 0 || !strings.Contains(out, "hypervisorVersion: 4.17.3") {
		t.Errorf("plaintext TCP: exit %d\n%s%s", code, out, errOut)
	}
}
