package simhost

import (
	"log/slog"
	"net"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore/xenstored"
)

// xenstoreServer is what the sim host needs from its xenstored.
type xenstoreServer interface {
	Serve(l net.Listener) error
	ConnectDomain(domid uint32) (net.Conn, error)
	DomainException(domids ...uint32)
	Close() error
}

// newXenstored starts the embedded xenstored, asking state whether a
// domain exists or is dying.
func newXenstored(log *slog.Logger, state func(domid uint32) (exists, shutdownOrDying bool)) xenstoreServer {
	return xenstored.New(xenstored.Config{
		Logger:      log.With("component", "xenstored"),
		DomainState: state,
	})
}
