package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// remoteFlags select the daemon's TCP listener (xenopsd-ng --listen)
// instead of its unix socket.
type remoteFlags struct {
	address    string // HOST:PORT
	caFile     string // CA bundle that signed the daemon's certificate (default: system roots)
	certFile   string // client certificate, for a daemon started with --tls-client-ca
	keyFile    string
	serverName string
	insecure   bool // plaintext, for a daemon started with --insecure-listen
}

func (r *remoteFlags) register(pf *pflag.FlagSet) {
	pf.StringVar(&r.address, "address", os.Getenv("XOPSCTL_ADDRESS"),
		"daemon's TCP HOST:PORT (its --listen) instead of --socket (env XOPSCTL_ADDRESS)")
	pf.StringVar(&r.caFile, "tls-ca", "", "with --address: PEM CA bundle to verify the daemon (default: system roots)")
	pf.StringVar(&r.certFile, "tls-cert", "", "with --address: PEM client certificate")
	pf.StringVar(&r.keyFile, "tls-key", "", "with --address: PEM client key")
	pf.StringVar(&r.serverName, "tls-server-name", "", "with --address: name to verify in the daemon's certificate (default: the host)")
	pf.BoolVar(&r.insecure, "insecure", false, "with --address: no TLS (a daemon started with --insecure-listen)")
}

func (r *remoteFlags) dial() (*grpc.ClientConn, error) {
	var creds credentials.TransportCredentials
	if r.insecure {
		if r.caFile != "" || r.certFile != "" || r.keyFile != "" {
			return nil, usagef("--insecure: cannot be combined with --tls-ca, --tls-cert or --tls-key")
		}
		creds = insecure.NewCredentials()
	} else {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: r.serverName}
		if r.caFile != "" {
			pem, err := os.ReadFile(r.caFile)
			if err != nil {
				return nil, usagef("--tls-ca: %v", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, usagef("--tls-ca %s: no PEM certificate in it", r.caFile)
			}
			tc.RootCAs = pool
		}
		if (r.certFile == "") != (r.keyFile == "") {
			return nil, usagef("--tls-cert and --tls-key go together")
		}
		if r.certFile != "" {
			cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
			if err != nil {
				return nil, usagef("--tls-cert/--tls-key: %v", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient("dns:///"+r.address, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("--address %s: %w", r.address, err)
	}
	return conn, nil
}
