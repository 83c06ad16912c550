package service

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
)

// UnixPeerInfo is the AuthInfo of a connection on the unix socket: the
// kernel's record (SO_PEERCRED) of the process that connected.
type UnixPeerInfo struct {
	credentials.CommonAuthInfo
	PID int32
	UID uint32
	GID uint32
}

// AuthType implements credentials.AuthInfo.
func (UnixPeerInfo) AuthType() string { return "unix-peercred" }

// UnixPeerCredentials are the transport credentials of the unix socket:
// plaintext, as insecure.NewCredentials, with each connection's peer
// credentials read from the kernel at accept and kept as its UnixPeerInfo,
// so that the RPC logs name the uid and pid of the caller. A connection whose
// peer credentials cannot be read (not a unix socket) is refused.
func UnixPeerCredentials() credentials.TransportCredentials {
	return unixPeerCreds{insecure.NewCredentials()}
}

type unixPeerCreds struct {
	credentials.TransportCredentials // insecure: the client side and Info
}

func (c unixPeerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil, nil, fmt.Errorf("peer credentials: %T is not a socket", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, nil, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return nil, nil, fmt.Errorf("peer credentials (SO_PEERCRED): %w", credErr)
	}
	return conn, UnixPeerInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity},
		PID:            cred.Pid, UID: cred.Uid, GID: cred.Gid,
	}, nil
}

func (c unixPeerCreds) Clone() credentials.TransportCredentials {
	return unixPeerCreds{c.TransportCredentials.Clone()}
}

// callerAttr is the "caller" log attribute of an RPC: who made it, as far
// as the transport knows. Over TLS: the client certificate's subject common
// name and subject alternative names (or that there was no certificate);
// over the unix socket: the uid, gid and pid of the calling process; always
// the peer address when it has one.
func callerAttr(ctx context.Context) slog.Attr {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return slog.String("caller", "unknown (no peer)")
	}
	var attrs []any
	switch ai := p.AuthInfo.(type) {
	case UnixPeerInfo:
		attrs = append(attrs, "uid", ai.UID, "gid", ai.GID, "pid", ai.PID)
	case credentials.TLSInfo:
		if certs := ai.State.PeerCertificates; len(certs) > 0 {
			c := certs[0]
			attrs = append(attrs, "cn", c.Subject.CommonName)
			var sans []string
			sans = append(sans, c.DNSNames...)
			for _, ip := range c.IPAddresses {
				sans = append(sans, ip.String())
			}
			sans = append(sans, c.EmailAddresses...)
			for _, u := range c.URIs {
				sans = append(sans, u.String())
			}
			if len(sans) > 0 {
				attrs = append(attrs, "san", sans)
			}
		} else {
			attrs = append(attrs, "cert", "none")
		}
	}
	if p.Addr != nil && p.Addr.String() != "" && p.Addr.String() != "@" {
		attrs = append(attrs, "addr", p.Addr.String())
	}
	if len(attrs) == 0 {
		return slog.String("caller", "unknown")
	}
	return slog.Group("caller", attrs...)
}
