package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

// selfSigned writes a certificate for 127.0.0.1 and its key as PEM files.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "xenopsd-ng test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}

func TestRemoteTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := selfSigned(t, dir)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
	apiv1.RegisterHostServiceServer(srv, &fakeServer{})
	go srv.Serve(l)
	defer srv.Stop()
	addr := l.Addr().String()

	out, errOut, code := xops(t, "/nonexistent", "--address", addr, "--tls-ca", certFile, "host", "info")
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
