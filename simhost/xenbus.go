package simhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// What the simulated drivers share, after Linux's xenbus core
// (drivers/xen/xenbus): one end of a split device, how it switches state,
// how it reports a fatal error, and how it reads the other end. The
// backends (blkback, netback: backend*.go) and the guests' frontends
// (blkfront, netfront: frontend*.go) are built on it, so both ends speak
// the protocol as Linux does (io/xenbus.h), to each other and to the
// toolstack.

// xenbusDev is one end of a split device.
type xenbusDev struct {
	cli      *xenstore.Client
	home     string // its domain's home, /local/domain/<id>
	nodename string // its directory below home: backend/vbd/1/51712, device/vif/0
	otherend string // the other end's directory (absolute)
	otherID  uint32 // the other end's domain
	// state is the state this end last switched to (dev->state): Linux
	// never re-reads it from the store, so a toolstack writing this end's
	// state node does not change what the driver believes.
	state devices.State
	log   *slog.Logger
}

// dir is the device's directory (absolute).
func (x *xenbusDev) dir() string { return x.home + "/" + x.nodename }

// read reads one of this end's keys.
func (x *xenbusDev) read(ctx context.Context, key string) (string, error) {
	v, err := x.cli.Read(ctx, x.dir()+"/"+key)
	return string(v), err
}

// readOther reads one of the other end's keys.
func (x *xenbusDev) readOther(ctx context.Context, key string) (string, error) {
	v, err := x.cli.Read(ctx, x.otherend+"/"+key)
	return string(v), err
}

// otherState is xenbus_read_driver_state of the other end: Unknown when
// the node is missing or does not scan as a number.
func (x *xenbusDev) otherState(ctx context.Context) devices.State {
	return readDriverState(ctx, x.cli, x.otherend)
}

func readDriverState(ctx context.Context, cli *xenstore.Client, dir string) devices.State {
	v, err := cli.Read(ctx, dir+"/state")
	if err != nil {
		return devices.StateUnknown
	}
	n, ok := scanInt(string(v))
	if !ok || n < -1<<31 || n >= 1<<31 {
		return devices.StateUnknown
	}
	return devices.State(n)
}

// online is xenbus_dev_is_online: the toolstack's "online" key, 0 if
// missing.
func (x *xenbusDev) online(ctx context.Context) bool {
	v, err := x.read(ctx, "online")
	if err != nil {
		return false
	}
	n, ok := scanUint(v)
	return ok && n != 0
}

// switchState is xenbus_switch_state: nothing if the driver believes it is
// in s already; otherwise s is written in a transaction, only if the state
// node still exists (a device being removed is not recreated).
func (x *xenbusDev) switchState(ctx context.Context, s devices.State) {
	if s == x.state {
		return
	}
	err := x.cli.Transaction(ctx, func(tx *xenstore.Tx) error {
		if _, err := tx.Read(ctx, x.dir()+"/state"); err != nil {
			return errAbort
		}
		return tx.Write(ctx, x.dir()+"/state", []byte(strconv.Itoa(int(s))))
	})
	if err != nil && !errors.Is(err, errAbort) {
		x.log.Debug("simhost: xenbus: cannot switch state", "dev", x.dir(), "state", s, "err", err)
		return
	}
	x.state = s
}

// errAbort ends a transaction without committing it.
var errAbort = errors.New("transaction aborted")

// writeKeys writes this end's keys in one transaction, only if the device
// still exists.
func (x *xenbusDev) writeKeys(ctx context.Context, kv ...string) error {
	err := x.cli.Transaction(ctx, func(tx *xenstore.Tx) error {
		if _, err := tx.Read(ctx, x.dir()+"/state"); err != nil {
			return errAbort
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if err := tx.Write(ctx, x.dir()+"/"+kv[i], []byte(kv[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, errAbort) {
		return syscall.ENOENT
	}
	return err
}

// errorPath is where xenbus_dev_error reports: error/<nodename> below the
// domain's home, in its node "error".
func (x *xenbusDev) errorPath() string { return x.home + "/error/" + x.nodename + "/error" }

// fatal is xenbus_dev_fatal: "<errno> <message>" in the error node, then
// Closing.
func (x *xenbusDev) fatal(ctx context.Context, errno syscall.Errno, format string, args ...any) {
	msg := fmt.Sprintf("%d %s", int(errno), fmt.Sprintf(format, args...))
	x.log.Info("simhost: xenbus device failed", "dev", x.dir(), "error", msg)
	if err := x.cli.Write(ctx, x.errorPath(), []byte(msg)); err != nil {
		x.log.Debug("simhost: xenbus: cannot write error node", "dev", x.dir(), "err", err)
	}
	x.switchState(ctx, devices.StateClosing)
}

// readOtherUint reads a number the other end wrote, as xenbus_scanf("%u")
// does, failing on what does not scan or does not fit 32 bits.
func (x *xenbusDev) readOtherUint(ctx context.Context, key string) (uint64, bool) {
	v, err := x.readOther(ctx, key)
	if err != nil {
		return 0, false
	}
	n, ok := scanUint(v)
	return n, ok && n <= 1<<32-1
}

// readOtherUint64 reads a 64-bit number the other end wrote.
func (x *xenbusDev) readOtherUint64(ctx context.Context, key string) (uint64, bool) {
	v, err := x.readOther(ctx, key)
	if err != nil {
		return 0, false
	}
	return scanUint(v)
}

// scanInt is sscanf("%d") of a node's value: optional blanks and sign,
// then at least one digit; what follows the digits is ignored.
func scanInt(s string) (int64, bool) {
	s = strings.TrimLeft(s, " \t\n")
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	n, ok := scanDigits(s, 10)
	if !ok || n > 1<<63-1 {
		return 0, false
	}
	if neg {
		return -int64(n), true
	}
	return int64(n), true
}

// scanUint is sscanf("%u") of a node's value, refusing a sign.
func scanUint(s string) (uint64, bool) {
	s = strings.TrimLeft(s, " \t\n")
	if s != "" && s[0] == '+' {
		s = s[1:]
	}
	return scanDigits(s, 10)
}

// scanDigits reads the leading digits of s in base, failing on none or on
// overflow.
func scanDigits(s string, base int) (uint64, bool) {
	end := 0
	for end < len(s) && digitIn(s[end], base) {
		end++
	}
	if end == 0 {
		return 0, false
	}
	n, err := strconv.ParseUint(s[:end], base, 64)
	return n, err == nil
}

func digitIn(c byte, base int) bool {
	switch {
	case c >= '0' && c <= '9':
		return true
	case base == 16 && (c|0x20) >= 'a' && (c|0x20) <= 'f':
		return true
	}
	return false
}

// scanMajorMinor is sscanf("%x:%x") of physical-device.
func scanMajorMinor(s string) (major, minor uint32, ok bool) {
	s = strings.TrimLeft(s, " \t\n")
	end := 0
	for end < len(s) && digitIn(s[end], 16) {
		end++
	}
	if end == 0 || end == len(s) || s[end] != ':' {
		return 0, 0, false
	}
	ma, ok1 := scanDigits(s[:end], 16)
	mi, ok2 := scanDigits(strings.TrimLeft(s[end+1:], " \t\n"), 16)
	if !ok1 || !ok2 || ma > 1<<32-1 || mi > 1<<32-1 {
		return 0, 0, false
	}
	return uint32(ma), uint32(mi), true
}

// errnoOf is the errno inside err (EIO if none).
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.EIO
}

// readOtherend is xenbus's read_otherend_details: it reads <other>-id and
// <other> (the other end's domain and directory, other being "frontend" or
// "backend"), checks the directory can be read and records both; false
// after a fatal error.
func (x *xenbusDev) readOtherend(ctx context.Context, other string) bool {
	id, err1 := x.read(ctx, other+"-id")
	path, err2 := x.read(ctx, other)
	n, ok := scanInt(id)
	if err1 != nil || err2 != nil || !ok || n < 0 || n >= 0xFFFF {
		x.fatal(ctx, syscall.ENOENT, "reading other end details from %s", x.nodename)
		return false
	}
	if _, err := x.cli.Read(ctx, path); path == "" || err != nil {
		x.fatal(ctx, syscall.ENOENT, "unable to read other end from %s.  missing or inaccessible.", x.nodename)
		return false
	}
	x.otherend, x.otherID = path, uint32(n)
	return true
}
