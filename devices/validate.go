package devices

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// InvalidError is a Disk or NIC the caller got wrong; Field names it as the
// Disk or NIC field ("device", "path", "mac", "bridge", "mtu", "devid").
// Nothing was changed.
type InvalidError struct {
	Field  string
	Reason string
	Err    error // the underlying error, if any (a Host's, a stat's)
}

func (e *InvalidError) Error() string { return e.Field + ": " + e.Reason }
func (e *InvalidError) Unwrap() error { return e.Err }

func invalid(field, format string, args ...any) error {
	return &InvalidError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// NIC bounds.
const (
	defaultMTU = 1500 // libxl's LIBXL_DEVICE_NIC_MTU_DEFAULT
	minMTU     = 68   // the least IPv4 allows (RFC 791)
	maxMTU     = 65535
	// maxVIFDevID keeps vif<domid>.<devid> within Linux's 15-byte
	// interface names for every domid.
	maxVIFDevID = 99999
)

func checkDomid(domid uint32) error {
	if domid == 0 || domid >= xenstore.DomidFirstRes {
		return fmt.Errorf("devices: domid %d is not a guest domain", domid)
	}
	return nil
}

// checkDisk validates d and returns its virtual-device number.
func checkDisk(domid uint32, d Disk) (int, error) {
	if err := checkDomid(domid); err != nil {
		return 0, err
	}
	devid, err := VirtualDevice(d.Device)
	if err != nil {
		return 0, &InvalidError{Field: "device", Reason: err.Error(), Err: err}
	}
	if err := checkDiskPath(d.Path); err != nil {
		return 0, err
	}
	if d.Format == FormatQCOW2 && (d.ReadOnly || d.CDROM) {
		return 0, invalid("mode", "%s", ReadOnlyQCOW2)
	}
	return devid, CheckFormat(d.Path, d.Format)
}

// ReadOnlyQCOW2 is why a read-only qcow2 disk is refused: seen on real Xen
// 4.17 with Debian 12's QEMU 7.2, whose xen-block logs "failed to create
// drive: Block node is read-only" for it and never serves the device.
const ReadOnlyQCOW2 = "read-only qcow2 disks are not supported: QEMU 7.2's xen-block (Debian 12's qemu-system-xen) opens the qcow2 layer read-write over the read-only file and fails (\"Block node is read-only\"); use a read-write qcow2 disk or a raw one"

// qcow2Magic starts every qcow2 image (QEMU's docs/interop/qcow2.txt).
const qcow2Magic = "QFI\xfb"

// CheckFormat checks that the file or block device at path starts as
// format says: a qcow2 image with the qcow2 magic, a raw one without it (a
// guest given a qcow2 image as raw would see QEMU's metadata, not its
// disk). Its error is an InvalidError on "format".
func CheckFormat(path string, format Format) error {
	switch format {
	case "", FormatRaw, FormatQCOW2:
	default:
		return invalid("format", "unknown format %q (want raw or qcow2)", format)
	}
	f, err := os.Open(path)
	if err != nil {
		return &InvalidError{Field: "path", Reason: fmt.Sprintf("%s cannot be read: %v", path, err), Err: err}
	}
	defer f.Close()
	head := make([]byte, len(qcow2Magic))
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return &InvalidError{Field: "path", Reason: fmt.Sprintf("%s cannot be read: %v", path, err), Err: err}
	}
	isQCOW2 := n == len(head) && string(head) == qcow2Magic
	switch {
	case format == FormatQCOW2 && !isQCOW2:
		return invalid("format", "%s is not a qcow2 image (no qcow2 magic at its start)", path)
	case format != FormatQCOW2 && isQCOW2:
		return invalid("format", "%s is a qcow2 image, not raw: give its format as qcow2", path)
	}
	return nil
}

// checkDiskPath accepts an absolute path to a regular file or a block
// device (what blkback can serve, through a loop device for a file).
func checkDiskPath(path string) error {
	if path == "" {
		return invalid("path", "no backing path")
	}
	if !filepath.IsAbs(path) {
		return invalid("path", "%s is not an absolute path", path)
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &InvalidError{Field: "path", Reason: path + " does not exist", Err: err}
	case err != nil:
		return &InvalidError{Field: "path", Reason: fmt.Sprintf("%s cannot be used: %v", path, err), Err: err}
	case fi.IsDir():
		return invalid("path", "%s is a directory, not a raw disk file or a block device", path)
	case fi.Mode().IsRegular():
		return nil
	case fi.Mode()&fs.ModeDevice != 0 && fi.Mode()&fs.ModeCharDevice == 0:
		return nil
	}
	return invalid("path", "%s is a %s, not a raw disk file or a block device", path, fileKind(fi.Mode()))
}

func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file (" + m.Type().String() + ")"
}

// checkNIC validates n and returns it with its defaults filled in (MTU
// 1500, the MAC in lower case).
func checkNIC(domid uint32, n NIC) (NIC, error) {
	if err := checkDomid(domid); err != nil {
		return n, err
	}
	if n.DevID < 0 || n.DevID > maxVIFDevID {
		return n, invalid("devid", "%d is outside 0..%d", n.DevID, maxVIFDevID)
	}
	mac, err := checkMAC(n.MAC)
	if err != nil {
		return n, err
	}
	n.MAC = mac
	if err := checkBridgeName(n.Bridge); err != nil {
		return n, err
	}
	if n.MTU == 0 {
		n.MTU = defaultMTU
	}
	if n.MTU < minMTU || n.MTU > maxMTU {
		return n, invalid("mtu", "%d is outside %d..%d", n.MTU, minMTU, maxMTU)
	}
	return n, nil
}

// checkMAC accepts six colon-separated hex octets of a unicast address.
func checkMAC(mac string) (string, error) {
	bad := func(why string) (string, error) {
		return "", invalid("mac", "%q %s (want a unicast address such as 00:16:3e:12:34:56)", mac, why)
	}
	parts := strings.Split(mac, ":")
	if len(parts) != 6 {
		return bad("is not six colon-separated octets")
	}
	var first byte
	zero := true
	for i, p := range parts {
		if len(p) != 2 || !isHex(p[0]) || !isHex(p[1]) {
			return bad("has an octet that is not two hex digits")
		}
		v := hexVal(p[0])<<4 | hexVal(p[1])
		if i == 0 {
			first = v
		}
		zero = zero && v == 0
	}
	if first&1 != 0 {
		return bad("is a multicast address")
	}
	if zero {
		return bad("is all zeros")
	}
	return strings.ToLower(mac), nil
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func hexVal(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}

// checkBridgeName accepts a Linux interface name (dev_valid_name: 1..15
// bytes, not "." or "..", no '/', ':' or white space).
func checkBridgeName(b string) error {
	if b == "" {
		return invalid("bridge", "no bridge named")
	}
	if len(b) > 15 || b == "." || b == ".." || strings.ContainsAny(b, "/: \t\n\r\v\f") {
		return invalid("bridge", "%q is not a Linux interface name", b)
	}
	return nil
}
