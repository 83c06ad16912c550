package xenstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"syscall"
)

// MsgType is the type field of a xenstore wire message (io/xs_wire.h).
type MsgType uint32

// Message types of the xenstore protocol as of Xen 4.17.
const (
	TypeControl            MsgType = 0 // also known as DEBUG
	TypeDirectory          MsgType = 1
	TypeRead               MsgType = 2
	TypeGetPerms           MsgType = 3
	TypeWatch              MsgType = 4
	TypeUnwatch            MsgType = 5
	TypeTransactionStart   MsgType = 6
	TypeTransactionEnd     MsgType = 7
	TypeIntroduce          MsgType = 8
	TypeRelease            MsgType = 9
	TypeGetDomainPath      MsgType = 10
	TypeWrite              MsgType = 11
	TypeMkdir              MsgType = 12
	TypeRm                 MsgType = 13
	TypeSetPerms           MsgType = 14
	TypeWatchEvent         MsgType = 15
	TypeError              MsgType = 16
	TypeIsDomainIntroduced MsgType = 17
	TypeResume             MsgType = 18
	TypeSetTarget          MsgType = 19
	TypeResetWatches       MsgType = 21
	TypeDirectoryPart      MsgType = 22
)

var typeNames = map[MsgType]string{
	TypeControl: "CONTROL", TypeDirectory: "DIRECTORY", TypeRead: "READ", TypeGetPerms: "GET_PERMS",
	TypeWatch: "WATCH", TypeUnwatch: "UNWATCH", TypeTransactionStart: "TRANSACTION_START",
	TypeTransactionEnd: "TRANSACTION_END", TypeIntroduce: "INTRODUCE", TypeRelease: "RELEASE",
	TypeGetDomainPath: "GET_DOMAIN_PATH", TypeWrite: "WRITE", TypeMkdir: "MKDIR", TypeRm: "RM",
	TypeSetPerms: "SET_PERMS", TypeWatchEvent: "WATCH_EVENT", TypeError: "ERROR",
	TypeIsDomainIntroduced: "IS_DOMAIN_INTRODUCED", TypeResume: "RESUME", TypeSetTarget: "SET_TARGET",
	TypeResetWatches: "RESET_WATCHES", TypeDirectoryPart: "DIRECTORY_PART",
}

func (t MsgType) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return "TYPE_" + strconv.FormatUint(uint64(t), 10)
}

// Protocol limits (io/xs_wire.h).
const (
	HeaderSize    = 16
	PayloadMax    = 4096 // XENSTORE_PAYLOAD_MAX, both directions
	AbsPathMax    = 3072 // XENSTORE_ABS_PATH_MAX
	RelPathMax    = 2048 // XENSTORE_REL_PATH_MAX
	DomidFirstRes = 0x7FF0
)

// Header is the fixed 16-byte message header: four little-endian u32.
type Header struct {
	Type  MsgType
	ReqID uint32
	TxID  uint32
	Len   uint32
}

// Msg is one wire message.
type Msg struct {
	Header
	Payload []byte
}

// ErrPayloadTooLarge is returned by ReadMsg when the header announces a payload
// larger than PayloadMax. The stream cannot be resynchronised after it.
var ErrPayloadTooLarge = errors.New("xenstore: message payload exceeds the size limit (4096 bytes; 1 MiB for replies a client reads)")

// DecodeHeader parses a 16-byte header.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("xenstore: short header: %d bytes", len(b))
	}
	return Header{
		Type:  MsgType(binary.LittleEndian.Uint32(b[0:])),
		ReqID: binary.LittleEndian.Uint32(b[4:]),
		TxID:  binary.LittleEndian.Uint32(b[8:]),
		Len:   binary.LittleEndian.Uint32(b[12:]),
	}, nil
}

// AppendMsg appends the encoding of a message to dst.
func AppendMsg(dst []byte, t MsgType, reqID, txID uint32, payload []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(t))
	dst = binary.LittleEndian.AppendUint32(dst, reqID)
	dst = binary.LittleEndian.AppendUint32(dst, txID)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...)
}

// ReadMsg reads one message from r. hdr must be a HeaderSize scratch buffer
// (to avoid an allocation per message); it may be nil. A payload over
// PayloadMax is refused with ErrPayloadTooLarge (what a server must do).
func ReadMsg(r io.Reader, hdr []byte) (Msg, error) {
	return ReadMsgLimit(r, hdr, PayloadMax)
}

// MaxReplyPayload bounds the replies a client accepts. The protocol caps
// payloads at 4096 bytes and C xenstored answers E2BIG instead of sending
// more, but oxenstored (4.17, observed in nested Xen) sends DIRECTORY replies
// of any length to dom0, e.g. 8.4 KB for 300 children; the client takes them
// rather than losing the connection.
const MaxReplyPayload = 1 << 20

// ReadMsgLimit is ReadMsg with a caller-chosen payload limit; ErrPayloadTooLarge
// is returned for a header announcing more than max bytes.
func ReadMsgLimit(r io.Reader, hdr []byte, max int) (Msg, error) {
	if len(hdr) < HeaderSize {
		hdr = make([]byte, HeaderSize)
	}
	hdr = hdr[:HeaderSize]
	if _, err := io.ReadFull(r, hdr); err != nil {
		return Msg{}, err
	}
	h, _ := DecodeHeader(hdr)
	if uint64(h.Len) > uint64(max) {
		return Msg{Header: h}, ErrPayloadTooLarge
	}
	m := Msg{Header: h}
	if h.Len > 0 {
		m.Payload = make([]byte, h.Len)
		if _, err := io.ReadFull(r, m.Payload); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return Msg{}, err
		}
	}
	return m, nil
}

// SplitStrings splits a payload of NUL-terminated strings. A final string
// without a terminator is returned as well (some replies omit it).
func SplitStrings(p []byte) []string {
	if len(p) == 0 {
		return nil
	}
	if p[len(p)-1] == 0 {
		p = p[:len(p)-1]
	}
	parts := bytes.Split(p, []byte{0})
	out := make([]string, len(parts))
	for i, s := range parts {
		out[i] = string(s)
	}
	return out
}

// JoinStrings builds a payload of NUL-terminated strings.
func JoinStrings(ss ...string) []byte {
	n := 0
	for _, s := range ss {
		n += len(s) + 1
	}
	b := make([]byte, 0, n)
	for _, s := range ss {
		b = append(b, s...)
		b = append(b, 0)
	}
	return b
}

// errnoNames maps the errno names of io/xs_wire.h xsd_errors (plus EQUOTA,
// sent by oxenstored) to errnos.
var errnoNames = map[string]syscall.Errno{
	"EINVAL": syscall.EINVAL, "EACCES": syscall.EACCES, "EEXIST": syscall.EEXIST,
	"EISDIR": syscall.EISDIR, "ENOENT": syscall.ENOENT, "ENOMEM": syscall.ENOMEM,
	"ENOSPC": syscall.ENOSPC, "EIO": syscall.EIO, "ENOTEMPTY": syscall.ENOTEMPTY,
	"ENOSYS": syscall.ENOSYS, "EROFS": syscall.EROFS, "EBUSY": syscall.EBUSY,
	"EAGAIN": syscall.EAGAIN, "EISCONN": syscall.EISCONN, "E2BIG": syscall.E2BIG,
	"EPERM": syscall.EPERM, "ENOTCONN": syscall.ENOTCONN, "ETIMEDOUT": syscall.ETIMEDOUT,
	"EBADF": syscall.EBADF, "ENOTSUP": syscall.ENOTSUP, "EFBIG": syscall.EFBIG,
	"ESRCH": syscall.ESRCH, "EQUOTA": syscall.EDQUOT,
}

// ErrnoName returns the xenstore wire name of an errno ("ENOENT"), or "EIO"
// for errnos the protocol has no name for.
func ErrnoName(e syscall.Errno) string {
	for n, v := range errnoNames {
		if v == e && n != "EQUOTA" {
			return n
		}
	}
	return "EIO"
}

// ErrnoFromName maps a wire error name to an errno; ok is false for names
// not known to this package.
func ErrnoFromName(name string) (syscall.Errno, bool) {
	e, ok := errnoNames[name]
	return e, ok
}

// ErrQuota is matched (errors.Is) by errors carrying oxenstored's EQUOTA.
var ErrQuota = errors.New("xenstore: quota exceeded (EQUOTA)")

// Error is an ERROR reply from the daemon, or a request refused locally
// before sending. errors.Is(err, syscall.ENOENT) etc. match Errno.
type Error struct {
	Op    MsgType
	Path  string
	Name  string        // wire errno name as sent, e.g. "ENOENT"
	Errno syscall.Errno // 0 if the name is unknown
	Local string        // non-empty: refused by the client, with this reason
}

func (e *Error) Error() string {
	what := "xenstore " + e.Op.String()
	if e.Path != "" {
		what += " " + strconv.Quote(e.Path)
	}
	if e.Local != "" {
		return what + ": " + e.Local
	}
	return what + ": " + e.Name
}

// Is lets errors.Is match syscall errnos and ErrQuota.
func (e *Error) Is(target error) bool {
	if target == ErrQuota {
		return e.Name == "EQUOTA"
	}
	if t, ok := target.(syscall.Errno); ok {
		return e.Errno != 0 && t == e.Errno
	}
	return false
}

// Unwrap returns the errno so callers can errors.As to syscall.Errno.
func (e *Error) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// DecodeError converts an ERROR payload ("ENOENT\0") into an *Error.
func DecodeError(op MsgType, path string, payload []byte) *Error {
	name := string(bytes.TrimRight(payload, "\x00"))
	if i := bytes.IndexByte([]byte(name), 0); i >= 0 {
		name = name[:i]
	}
	e, _ := ErrnoFromName(name)
	return &Error{Op: op, Path: path, Name: name, Errno: e}
}

// DecodeWatchEvent parses a WATCH_EVENT payload "path\0token\0".
func DecodeWatchEvent(p []byte) (path, token string, err error) {
	i := bytes.IndexByte(p, 0)
	if i < 0 {
		return "", "", errors.New("xenstore: watch event without path terminator")
	}
	rest := p[i+1:]
	j := bytes.IndexByte(rest, 0)
	if j < 0 {
		j = len(rest) // tolerate a missing final NUL
	}
	return string(p[:i]), string(rest[:j]), nil
}

// ValidPathLength reports whether a request path is within the protocol
// limits and can be framed (no NUL byte).
func checkPath(op MsgType, path string) error {
	if path == "" {
		return &Error{Op: op, Path: path, Name: "EINVAL", Errno: syscall.EINVAL, Local: "empty path"}
	}
	if bytes.IndexByte([]byte(path), 0) >= 0 {
		return &Error{Op: op, Path: path, Name: "EINVAL", Errno: syscall.EINVAL, Local: "path contains a NUL byte"}
	}
	max := AbsPathMax
	if path[0] != '/' && path[0] != '@' {
		max = RelPathMax
	}
	if len(path) > max {
		return &Error{Op: op, Path: path[:32] + "...", Name: "EINVAL", Errno: syscall.EINVAL,
			Local: fmt.Sprintf("path is %d bytes, limit %d", len(path), max)}
	}
	return nil
}
