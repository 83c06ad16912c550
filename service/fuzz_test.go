package service

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/simhost"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// Bounds of FuzzVMService. Go's fuzzing engine kills a worker whose input
// runs for 10 s ("deadlocked!", with its output discarded), so one input -
// the call, the leak check and a trim - must stay well inside that: a call
// that needs more than fuzzCallLimit is reported as a hang with its method,
// and the trim destroys at most fuzzMaxVMs+1 VMs.
const (
	fuzzCallLimit   = 5 * time.Second        // a call taking longer is a hang
	fuzzMaxTimeout  = 100 * time.Millisecond // cap on a request's clean-shutdown timeout
	fuzzMaxVMs      = 3                      // more and every VM is destroyed and deleted
	fuzzMaxPayload  = 4 << 10
	fuzzCheckLimit  = 3 * time.Second
	fuzzMethodCount = 16
)

// fuzzCall decodes payload as the request of VM service method m (mod
// fuzzMethodCount) and calls it on s. ok is false when the payload is not
// that request's wire format. Waits are forced and shutdown timeouts capped
// so that every call ends with its task.
func fuzzCall(ctx context.Context, s vmServer, m uint8, payload []byte) (ok bool, err error) {
	decode := func(req proto.Message) bool { return proto.Unmarshal(payload, req) == nil }
	capTimeout := func(d **durationpb.Duration) {
		// 0 (and absent) means the daemon's default, 5 minutes: capped too.
		if *d == nil || (*d).AsDuration() > fuzzMaxTimeout || (*d).AsDuration() <= 0 {
			*d = durationpb.New(fuzzMaxTimeout)
		}
	}
	switch m % fuzzMethodCount {
	case 0:
		req := &pb.CreateVMRequest{}
		if ok = decode(req); ok {
			_, err = s.CreateVM(ctx, req)
		}
	case 1:
		req := &pb.GetVMRequest{}
		if ok = decode(req); ok {
			_, err = s.GetVM(ctx, req)
		}
	case 2:
		req := &pb.UpdateVMRequest{}
		if ok = decode(req); ok {
			_, err = s.UpdateVM(ctx, req)
		}
	case 3:
		req := &pb.DeleteVMRequest{}
		if ok = decode(req); ok {
			_, err = s.DeleteVM(ctx, req)
		}
	case 4:
		req := &pb.StartVMRequest{}
		if ok = decode(req); ok {
			req.Wait = true
			_, err = s.StartVM(ctx, req)
		}
	case 5:
		req := &pb.PauseVMRequest{}
		if ok = decode(req); ok {
			req.Wait = true
			_, err = s.PauseVM(ctx, req)
		}
	case 6:
		req := &pb.UnpauseVMRequest{}
		if ok = decode(req); ok {
			req.Wait = true
			_, err = s.UnpauseVM(ctx, req)
		}
	case 7:
		req := &pb.ShutdownVMRequest{}
		if ok = decode(req); ok {
			req.Wait, req.Force = true, true
			capTimeout(&req.Timeout)
			_, err = s.ShutdownVM(ctx, req)
		}
	case 8:
		req := &pb.RebootVMRequest{}
		if ok = decode(req); ok {
			req.Wait, req.Force = true, true
			capTimeout(&req.Timeout)
			_, err = s.RebootVM(ctx, req)
		}
	case 9:
		req := &pb.DestroyVMRequest{}
		if ok = decode(req); ok {
			req.Wait = true
			_, err = s.DestroyVM(ctx, req)
		}
	case 10:
		req := &pb.AddDiskRequest{}
		if ok = decode(req); ok {
			req.Wait = true
			_, err = s.AddDisk(ctx, req)
		}
	case 11:
		req := &pb.RemoveDiskRequest{}
		if ok = decode(req); ok {
			req.Wait = true
			_, err = s.RemoveDisk(ctx, req)
		}
	case 12:
		req := &pb.AddNICRequest{}
		if ok = decode(req); ok {
			req.Wait = true
			_, err = s.AddNIC(ctx, req)
		}
	case 13:
		req := &pb.RemoveNICRequest{}
		if ok = decode(req); ok {
			req.Wait = true
			_, err = s.RemoveNIC(ctx, req)
		}
	case 14:
		req := &pb.SuspendVMRequest{}
		if ok = decode(req); ok {
			req.Wait = true
			capTimeout(&req.Timeout)
			_, err = s.SuspendVM(ctx, req)
		}
	case 15:
		req := &pb.ResumeVMRequest{}
		if ok = decode(req); ok {
			req.Wait = true
			_, err = s.ResumeVM(ctx, req)
		}
	}
	return ok, err
}

// FuzzVMService sends fuzzed VM service requests (any payload that is the
// chosen request's wire format) into the service layer on the real core and
// an in-process sim host. After each: no panic, no call past its bound, no
// domain that no VM owns, and no xenstore tree of a VM or domain that is
// gone. State stays small: past fuzzMaxVMs VMs, all are destroyed and
// deleted.
func FuzzVMService(f *testing.F) {
	seed := func(m uint8, req proto.Message) {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(m, b)
	}
	full := goodSpec("f-full", 64<<20)
	full.XenstoreData = map[string]string{"vm-data/role": "db"}
	full.Platform = map[string]string{"tsc_mode": "native"}
	full.Nics = []*pb.NIC{{Bridge: "xenbr0", Mac: "00:16:3e:00:00:01"}}
	full.Disks = []*pb.Disk{{Device: "xvda", Path: fuzzDiskImage(f), Mode: pb.DiskMode_DISK_MODE_RW}}
	seed(0, &pb.CreateVMRequest{Spec: goodSpec("f0", 64<<20)})
	seed(0, &pb.CreateVMRequest{Spec: full, RequestId: "r1"})
	seed(0, &pb.CreateVMRequest{Spec: goodSpec("f1", 64<<20), RequestId: "r1"})
	seed(1, &pb.GetVMRequest{Id: "f0"})
	seed(2, &pb.UpdateVMRequest{Id: "f0", Spec: goodSpec("f2", 32<<20)})
	seed(3, &pb.DeleteVMRequest{Id: "f0"})
	seed(4, &pb.StartVMRequest{Id: "f0"})
	seed(4, &pb.StartVMRequest{Id: "f-full", Paused: true})
	seed(5, &pb.PauseVMRequest{Id: "f0"})
	seed(6, &pb.UnpauseVMRequest{Id: "f0"})
	seed(7, &pb.ShutdownVMRequest{Id: "f0"})
	seed(8, &pb.RebootVMRequest{Id: "f0"})
	seed(9, &pb.DestroyVMRequest{Id: "f0"})
	disk := fuzzDiskImage(f)
	seed(10, &pb.AddDiskRequest{Id: "f-full", Disk: &pb.Disk{Device: "xvdb", Path: disk, Mode: pb.DiskMode_DISK_MODE_RO}})
	seed(11, &pb.RemoveDiskRequest{Id: "f-full", Device: "xvda"})
	seed(12, &pb.AddNICRequest{Id: "f-full", Nic: &pb.NIC{Bridge: "xenbr0", Mtu: 9000}})
	seed(13, &pb.RemoveNICRequest{Id: "f-full", Mac: "00:16:3e:00:00:01", Force: true})
	seed(14, &pb.SuspendVMRequest{Id: "f-full"})
	seed(15, &pb.ResumeVMRequest{Id: "f-full"})

	m, hc := realManager(f)
	s := vmServer{Server: New(m, Options{Logger: slog.New(slog.DiscardHandler)})}
	xs, err := xenstore.Dial(context.Background(), hc.XenstoredPath())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { xs.Close() })

	f.Fuzz(func(t *testing.T, method uint8, payload []byte) {
		if len(payload) > fuzzMaxPayload {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), fuzzCallLimit)
		defer cancel()
		if ok, _ := fuzzCall(ctx, s, method, payload); !ok {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("method %d did not return within %v", method%fuzzMethodCount, fuzzCallLimit)
		}
		cctx, ccancel := context.WithTimeout(context.Background(), fuzzCheckLimit)
		defer ccancel()
		if msg := fuzzLeaks(cctx, s, hc, xs); msg != "" {
			t.Fatalf("after method %d: %s", method%fuzzMethodCount, msg)
		}
		fuzzTrim(t, cctx, s)
	})
}

// fuzzLeaks reports a domain no VM owns, or a xenstore tree of a VM or a
// domain that no longer exists ("" when there is none).
func fuzzLeaks(ctx context.Context, s vmServer, hc *simhost.Client, xs *xenstore.Client) string {
	l, err := s.ListVMs(ctx, &pb.ListVMsRequest{})
	if err != nil {
		return err.Error()
	}
	owners := map[string]bool{}
	var disks, nics int
	for _, vm := range l.GetVms() {
		owners[vm.GetId()] = true
		for _, d := range vm.GetDevices() {
			if d.GetKind() == pb.DeviceKind_DEVICE_KIND_DISK {
				disks++
			} else {
				nics++
			}
		}
	}
	doms, err := hc.ListDomains(ctx)
	if err != nil {
		return err.Error()
	}
	live := map[string]bool{"0": true}
	for _, d := range doms {
		if d.Domid == 0 {
			continue
		}
		live[strconv.Itoa(int(d.Domid))] = true
		if id := uuid.UUID(d.Handle).String(); !owners[id] {
			return fmt.Sprintf("domain %d (handle %s) belongs to no VM", d.Domid, id)
		}
	}
	// Devices: dom0's loops and vifs are those of plugged devices; backend
	// directories those of live domains.
	d0, err := hc.Dom0State(ctx)
	if err != nil {
		return err.Error()
	}
	if len(d0.Loops) != disks || len(d0.Links) != nics {
		return fmt.Sprintf("dom0 has %d loop devices and %d vifs; the VMs have %d disks and %d NICs plugged", len(d0.Loops), len(d0.Links), disks, nics)
	}
	for _, tree := range []struct {
		root string
		ok   map[string]bool
	}{{"/vm", owners}, {strings.TrimSuffix(domain.PrivatePath(""), "/"), owners}, {"/local/domain", live},
		{"/local/domain/0/backend/vbd", live}, {"/local/domain/0/backend/vif", live}} {
		names, err := xs.List(ctx, tree.root)
		if err != nil && !strings.Contains(err.Error(), "ENOENT") {
			return err.Error()
		}
		for _, n := range names {
			if !tree.ok[n] {
				return fmt.Sprintf("xenstore %s/%s is left of a VM or domain that is gone", tree.root, n)
			}
		}
	}
	return ""
}

// fuzzTrim destroys and deletes every VM once there are more than
// fuzzMaxVMs, so that the state a fuzz run builds stays small.
func fuzzTrim(t *testing.T, ctx context.Context, s vmServer) {
	l, err := s.ListVMs(ctx, &pb.ListVMsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.GetVms()) <= fuzzMaxVMs {
		return
	}
	for _, vm := range l.GetVms() {
		if vm.GetPowerState() != pb.PowerState_POWER_STATE_HALTED {
			if _, err := s.DestroyVM(ctx, &pb.DestroyVMRequest{Id: vm.GetId(), Wait: true}); err != nil {
				t.Fatalf("destroy %s: %v", vm.GetId(), err)
			}
		}
		if _, err := s.DeleteVM(ctx, &pb.DeleteVMRequest{Id: vm.GetId()}); err != nil {
			t.Fatalf("delete %s: %v", vm.GetId(), err)
		}
	}
}

// TestFuzzLeaksNotices: the fuzz target's leak check can fail: a xenstore
// tree of a VM that does not exist is reported.
func TestFuzzLeaksNotices(t *testing.T) {
	m, hc := realManager(t)
	s := vmServer{Server: New(m, Options{Logger: slog.New(slog.DiscardHandler)})}
	ctx := ctxT(t)
	xs, err := xenstore.Dial(ctx, hc.XenstoredPath())
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	if _, err := s.CreateVM(ctx, &pb.CreateVMRequest{Spec: goodSpec("leak", 64<<20)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartVM(ctx, &pb.StartVMRequest{Id: "leak", Wait: true}); err != nil {
		t.Fatal(err)
	}
	if msg := fuzzLeaks(ctx, s, hc, xs); msg != "" {
		t.Fatalf("a clean state reported: %s", msg)
	}
	if err := xs.Write(ctx, "/vm/2b1f0c55-1111-4222-8333-444455556666/name", []byte("ghost")); err != nil {
		t.Fatal(err)
	}
	if msg := fuzzLeaks(ctx, s, hc, xs); !strings.Contains(msg, "2b1f0c55-1111-4222-8333-444455556666") {
		t.Fatalf("a ghost VM tree not reported: %q", msg)
	}
}

// fuzzDiskImage is a small raw image file for the fuzzed specs' disks.
func fuzzDiskImage(f *testing.F) string {
	p := filepath.Join(f.TempDir(), "disk.img")
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
		f.Fatal(err)
	}
	return p
}
