package dom0

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netHost returns a Host working in a network namespace of its own, which
// disappears with everything in it when the test ends, and a netlink
// handle for the test's own changes there.
func netHost(t *testing.T, log *slog.Logger) (*Host, *netlink.Handle, netns.NsHandle) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace, bridges and links")
	}
	ns := newNetns(t)
	nl, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	return &Host{log: log, sysfs: "/sys", nl: nl, netns: &ns}, nl, ns
}

// newNetns creates a network namespace and leaves the calling thread
// where it was.
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	origin, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer origin.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Skipf("cannot create a network namespace: %v", err)
	}
	disableIPv6() // no neighbour discovery traffic to blur the counters
	if err := netns.Set(origin); err != nil {
		// The thread stays locked, so it ends with this goroutine.
		ns.Close()
		t.Fatalf("back to the original network namespace: %v", err)
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() { ns.Close() })
	return ns
}

// disableIPv6 turns IPv6 off in the calling thread's network namespace,
// where the kernel has it.
func disableIPv6() {
	for _, conf := range []string{"all", "default"} {
		_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+conf+"/disable_ipv6", []byte("1"), 0)
	}
}

// addLink creates link, which the test deletes when it ends.
func addLink(t *testing.T, nl *netlink.Handle, link netlink.Link) netlink.Link {
	t.Helper()
	if err := nl.LinkAdd(link); err != nil {
		t.Fatalf("add %s %s: %v", link.Type(), link.Attrs().Name, err)
	}
	name := link.Attrs().Name
	t.Cleanup(func() {
		if l, err := nl.LinkByName(name); err == nil {
			_ = nl.LinkDel(l)
		}
	})
	got, err := nl.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func addBridge(t *testing.T, nl *netlink.Handle, name string, mtu int) netlink.Link {
	return addLink(t, nl, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}})
}

// addVIF stands in for netback: a veth pair whose peer plays the guest.
func addVIF(t *testing.T, nl *netlink.Handle, name string) netlink.Link {
	return addLink(t, nl, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "guest-" + name})
}

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestCheckBridge(t *testing.T) {
	h, nl, _ := netHost(t, quietLog())
	addBridge(t, nl, "xenbr0", 0)
	addVIF(t, nl, "veth0")
	ctx := context.Background()
	if err := h.CheckBridge(ctx, "xenbr0"); err != nil {
		t.Errorf("CheckBridge(xenbr0): %v", err)
	}
	for name, want := range map[string]string{
		"xenbr9":               `bridge "xenbr9" does not exist`,
		"veth0":                `"veth0" is a veth link, not a bridge`,
		"":                     "empty interface name",
		"a-name-far-too-long0": "longer than 15 bytes",
		"br/0":                 "not a valid interface name",
	} {
		err := h.CheckBridge(ctx, name)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckBridge(%q) = %v, want %q", name, err, want)
		}
	}
}

// recordLog is a slog handler that tells when a message is logged.
type recordLog struct {
	msg  string
	seen chan struct{}
	once sync.Once
}

func (r *recordLog) Enabled(context.Context, slog.Level) bool { return true }
func (r *recordLog) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recordLog) WithGroup(string) slog.Handler            { return r }
func (r *recordLog) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message == r.msg {
		r.once.Do(func() { close(r.seen) })
	}
	return nil
}

// ConnectVIF waits for netback's interface, then makes it a port of the
// bridge as vif-bridge does; DisconnectVIF takes it out again.
func TestConnectVIF(t *testing.T) {
	waiting := &recordLog{msg: "waiting for the vif to appear", seen: make(chan struct{})}
	h, nl, _ := netHost(t, slog.New(waiting))
	br := addBridge(t, nl, "xenbr0", 1400)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	connected := make(chan error, 1)
	go func() { connected <- h.ConnectVIF(ctx, "vif1.0", "xenbr0", 0) }()
	select {
	case <-waiting.seen:
	case err := <-connected:
		t.Fatalf("ConnectVIF returned before the vif existed: %v", err)
	}
	addVIF(t, nl, "vif1.0")
	if err := <-connected; err != nil {
		t.Fatal(err)
	}
	// MTU 0: the bridge's.
	wantPort(t, nl, "vif1.0", br, 1400)

	// Again, with an MTU of its own: only that changes.
	if err := h.ConnectVIF(ctx, "vif1.0", "xenbr0", 1280); err != nil {
		t.Fatal(err)
	}
	wantPort(t, nl, "vif1.0", br, 1280)

	if err := h.DisconnectVIF(ctx, "vif1.0"); err != nil {
		t.Fatal(err)
	}
	vif, err := nl.LinkByName("vif1.0")
	if err != nil {
		t.Fatal(err)
	}
	if a := vif.Attrs(); a.MasterIndex != 0 || a.Flags&net.FlagUp != 0 {
		t.Errorf("after DisconnectVIF: master %d, flags %v; want no master, down", a.MasterIndex, a.Flags)
	}
	if err := h.DisconnectVIF(ctx, "vif1.0"); err != nil {
		t.Errorf("second DisconnectVIF: %v", err)
	}
	if err := h.DisconnectVIF(ctx, "vif9.9"); err != nil {
		t.Errorf("DisconnectVIF of a missing vif: %v", err)
	}
}

// wantPort checks that name is an up port of bridge br with vif-bridge's
// MAC and the MTU mtu.
func wantPort(t *testing.T, nl *netlink.Handle, name string, br netlink.Link, mtu int) {
	t.Helper()
	vif, err := nl.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	a := vif.Attrs()
	if a.MasterIndex != br.Attrs().Index {
		t.Errorf("%s master index %d, want %d (%s)", name, a.MasterIndex, br.Attrs().Index, br.Attrs().Name)
	}
	if a.MTU != mtu {
		t.Errorf("%s MTU %d, want %d", name, a.MTU, mtu)
	}
	if !bytes.Equal(a.HardwareAddr, vifMAC) {
		t.Errorf("%s MAC %s, want %s", name, a.HardwareAddr, vifMAC)
	}
	if a.Flags&net.FlagUp == 0 {
		t.Errorf("%s is down", name)
	}
}

func TestConnectVIFFails(t *testing.T) {
	h, nl, _ := netHost(t, quietLog())
	addBridge(t, nl, "xenbr0", 0)
	addVIF(t, nl, "vif2.0")

	err := h.ConnectVIF(context.Background(), "vif2.0", "nobridge", 0)
	if err == nil || !strings.Contains(err.Error(), `bridge "nobridge" does not exist`) {
		t.Errorf("ConnectVIF to a missing bridge: %v", err)
	}
	if vif, _ := nl.LinkByName("vif2.0"); vif.Attrs().MasterIndex != 0 || vif.Attrs().Flags&net.FlagUp != 0 {
		t.Error("a failed ConnectVIF changed the vif")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err = h.ConnectVIF(ctx, "vif3.0", "xenbr0", 0)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "vif3.0 did not appear") {
		t.Errorf("ConnectVIF of a vif that never appears: %v", err)
	}
}

func TestVIFStats(t *testing.T) {
	h, nl, ns := netHost(t, quietLog())
	addBridge(t, nl, "xenbr0", 0)
	addVIF(t, nl, "vif4.0")
	if err := h.ConnectVIF(context.Background(), "vif4.0", "xenbr0", 0); err != nil {
		t.Fatal(err)
	}
	guest, err := nl.LinkByName("guest-vif4.0")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(guest); err != nil {
		t.Fatal(err)
	}
	vif, err := nl.LinkByName("vif4.0")
	if err != nil {
		t.Fatal(err)
	}

	before, err := h.VIFStats("vif4.0")
	if err != nil {
		t.Fatal(err)
	}
	const frameLen, fromGuest, toGuest = 100, 20, 7
	sendFrames(t, ns, guest.Attrs().Index, fromGuest, frameLen)
	sendFrames(t, ns, vif.Attrs().Index, toGuest, frameLen)
	after, err := h.VIFStats("vif4.0")
	if err != nil {
		t.Fatal(err)
	}
	rx, tx := after.RxPackets-before.RxPackets, after.TxPackets-before.TxPackets
	if rx < fromGuest || rx >= fromGuest+toGuest || after.RxBytes-before.RxBytes < fromGuest*frameLen {
		t.Errorf("received %d packets, %d bytes; the guest sent %d of %d bytes", rx, after.RxBytes-before.RxBytes, fromGuest, frameLen)
	}
	if tx < toGuest || tx >= fromGuest || after.TxBytes-before.TxBytes < toGuest*frameLen {
		t.Errorf("sent %d packets, %d bytes; want %d of %d bytes", tx, after.TxBytes-before.TxBytes, toGuest, frameLen)
	}

	if _, err := h.VIFStats("vif9.9"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("VIFStats of a missing vif: %v, want fs.ErrNotExist", err)
	}
}

// sendFrames sends n broadcast Ethernet frames of size bytes out of the
// interface index of namespace ns.
func sendFrames(t *testing.T, ns netns.NsHandle, index, n, size int) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		// The thread stays locked and in ns: it ends with this goroutine.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		frame := make([]byte, size)
		copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5})
		to := &unix.SockaddrLinklayer{Ifindex: index, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
		for range n {
			if err := unix.Sendto(fd, frame, 0, to); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("send frames: %v", err)
	}
}
