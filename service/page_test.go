package service

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

// worstSpec is the largest spec domain/validate.go accepts.
func worstSpec() *pb.VMSpec {
	s := &pb.VMSpec{
		Uuid: "6f1d7f0e-8a45-4b8e-9a55-0a3c2b1d4e5f", Name: strings.Repeat("n", domain.MaxNameLen),
		Type: pb.DomainType_DOMAIN_TYPE_HVM, MemoryStaticMax: 1 << 62, MemoryDynamicMin: 1 << 62, MemoryDynamicMax: 1 << 62,
		VcpusMax: domain.MaxVCPUs, VcpusAtStartup: domain.MaxVCPUs,
		Kernel: "/" + strings.Repeat("k", 4095), Ramdisk: "/" + strings.Repeat("r", 4095), Cmdline: strings.Repeat("c", 2048),
		Platform: map[string]string{}, XenstoreData: map[string]string{},
		OnPoweroff: pb.LifecycleAction_LIFECYCLE_ACTION_PRESERVE, OnReboot: pb.LifecycleAction_LIFECYCLE_ACTION_PRESERVE,
		OnCrash: pb.LifecycleAction_LIFECYCLE_ACTION_PRESERVE,
	}
	for i := range domain.MaxMapEntries {
		key := fmt.Sprintf("%03d%s", i, strings.Repeat("k", 253))
		s.Platform[key] = strings.Repeat("v", 2048)
		s.XenstoreData[key] = strings.Repeat("v", 2048)
	}
	for i := range domain.MaxDisks {
		s.Disks = append(s.Disks, &pb.Disk{Device: fmt.Sprintf("xvdz%c%c", 'a'+i/26, 'a'+i%26), Path: "/" + strings.Repeat("p", 4095),
			Mode: pb.DiskMode_DISK_MODE_RW, Cdrom: true})
	}
	for i := range domain.MaxNICs {
		s.Nics = append(s.Nics, &pb.NIC{Mac: fmt.Sprintf("00:16:3e:00:00:%02x", i), Bridge: strings.Repeat("b", 15), Mtu: 65535})
	}
	return s
}

// TestWorstVMFitsAPage checks page.go's arithmetic: the largest valid VM
// encodes to no more than worstVMBytes, and a page (at most MaxPageBytes of
// VMs, or one VM alone) stays under gRPC's default 4 MiB receive limit.
func TestWorstVMFitsAPage(t *testing.T) {
	vm := &pb.VM{Id: "6f1d7f0e-8a45-4b8e-9a55-0a3c2b1d4e5f", Spec: worstSpec(), PowerState: pb.PowerState_POWER_STATE_PAUSED,
		Domid: 32751, Problem: strings.Repeat("p", 200), CreateTime: timestamppb.Now(), UpdateTime: timestamppb.Now(), Generation: 1 << 63}
	size := proto.Size(vm)
	t.Logf("worst VM: %d bytes encoded (spec %d)", size, proto.Size(vm.Spec))
	if size > worstVMBytes {
		t.Errorf("the worst VM encodes to %d bytes, more than worstVMBytes %d: redo the arithmetic in page.go", size, worstVMBytes)
	}
	if size < worstVMBytes-4096 {
		t.Errorf("the worst VM encodes to %d bytes, far below worstVMBytes %d: redo the arithmetic in page.go", size, worstVMBytes)
	}
	const grpcDefaultMaxReceive = 4 << 20
	if worstVMBytes >= MaxPageBytes || MaxPageBytes+1024 >= grpcDefaultMaxReceive {
		t.Errorf("bounds do not nest: worst VM %d, page %d, gRPC limit %d", worstVMBytes, MaxPageBytes, grpcDefaultMaxReceive)
	}
	// A full page of worst VMs stays under the limit.
	resp := &pb.ListVMsResponse{Revision: 1 << 63, NextPageToken: strings.Repeat("t", 200)}
	for range page([]*pb.VM{vm, vm, vm, vm}, MaxPageSize) {
		resp.Vms = append(resp.Vms, vm)
	}
	if len(resp.Vms) != 2 || proto.Size(resp) >= grpcDefaultMaxReceive {
		t.Errorf("a page of worst VMs: %d VMs, %d bytes", len(resp.Vms), proto.Size(resp))
	}
}

func TestListVMsPages(t *testing.T) {
	f := newFake()
	for i := range 25 {
		id := fmt.Sprintf("00000000-0000-4000-8000-%012d", 24-i) // created in reverse id order
		f.vms[id] = domain.VM{ID: id, Spec: domain.Spec{UUID: id, Name: fmt.Sprintf("vm%02d", i)}}
	}
	c := serve(t, f, Options{})
	ctx := ctxT(t)
	var ids []string
	tok := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("more than 10 pages of 10 for 25 VMs")
		}
		r, err := c.vm.ListVMs(ctx, &pb.ListVMsRequest{PageSize: 10, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Vms) > 10 {
			t.Fatalf("page of %d VMs for page_size 10", len(r.Vms))
		}
		for _, vm := range r.Vms {
			ids = append(ids, vm.Id)
		}
		if tok = r.NextPageToken; tok == "" {
			break
		}
		// Deleting the last VM of a page does not disturb the next one.
		f.mu.Lock()
		delete(f.vms, r.Vms[len(r.Vms)-1].Id)
		f.mu.Unlock()
	}
	if len(ids) != 25 {
		t.Fatalf("listed %d VMs, want 25: %v", len(ids), ids)
	}
	for i, id := range ids {
		if want := fmt.Sprintf("00000000-0000-4000-8000-%012d", i); id != want {
			t.Fatalf("VM %d is %s, want %s (id order)", i, id, want)
		}
	}
	// The default page and the cap.
	for size, want := range map[int32]int{0: DefaultPageSize, 5000: MaxPageSize} {
		f := newFake()
		for i := range MaxPageSize + 1 {
			id := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
			f.vms[id] = domain.VM{ID: id}
		}
		r, err := serve(t, f, Options{}).vm.ListVMs(ctx, &pb.ListVMsRequest{PageSize: size})
		if err != nil || len(r.Vms) != want || r.NextPageToken == "" {
			t.Errorf("page_size %d: %d VMs, next %q, %v; want %d and a next page", size, len(r.GetVms()), r.GetNextPageToken(), err, want)
		}
	}
}

func TestListVMsPageBytes(t *testing.T) {
	f := newFake()
	big := strings.Repeat("v", 2048)
	for i := range 8 {
		id := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
		s := domain.Spec{UUID: id, Name: fmt.Sprintf("vm%d", i), Platform: map[string]string{}}
		for k := range 256 {
			s.Platform[fmt.Sprintf("k%d", k)] = big
		}
		f.vms[id] = domain.VM{ID: id, Spec: s}
	}
	c := serve(t, f, Options{})
	r, err := c.vm.ListVMs(ctxT(t), &pb.ListVMsRequest{PageSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(r.Vms); n == 0 || n >= 8 || proto.Size(r) > MaxPageBytes+1024 || r.NextPageToken == "" {
		t.Errorf("8 VMs of ~530 KiB, page_size 8: %d VMs, %d bytes, next %q; want a page under %d bytes and a next page",
			n, proto.Size(r), r.NextPageToken, MaxPageBytes)
	}
}

func TestBadPageRequests(t *testing.T) {
	f := newFake()
	now := time.Now()
	f.tasks["t1"] = domain.Task{ID: "t1", VMID: "a", CreatedAt: now}
	f.tasks["t2"] = domain.Task{ID: "t2", VMID: "a", CreatedAt: now.Add(time.Second)}
	c := serve(t, f, Options{})
	ctx := ctxT(t)
	tr, err := c.task.ListTasks(ctx, &pb.ListTasksRequest{VmId: "a", PageSize: 1})
	if err != nil || len(tr.Tasks) != 1 || tr.NextPageToken == "" {
		t.Fatalf("first task page: %v, %v", tr, err)
	}
	cases := []struct {
		name, field string
		call        func() error
	}{
		{"negative page_size", "page_size", func() error {
			_, err := c.vm.ListVMs(ctx, &pb.ListVMsRequest{PageSize: -1})
			return err
		}},
		{"garbage token", "page_token", func() error {
			_, err := c.vm.ListVMs(ctx, &pb.ListVMsRequest{PageToken: "not a token!"})
			return err
		}},
		{"a task token for VMs", "page_token", func() error {
			_, err := c.vm.ListVMs(ctx, &pb.ListVMsRequest{PageToken: tr.NextPageToken})
			return err
		}},
		{"a token of another vm_id", "page_token", func() error {
			_, err := c.task.ListTasks(ctx, &pb.ListTasksRequest{VmId: "b", PageToken: tr.NextPageToken})
			return err
		}},
		{"a bad task position", "page_token", func() error {
			_, err := c.task.ListTasks(ctx, &pb.ListTasksRequest{PageToken: encodeToken(tokenTasks, "", "yesterday", "t1")})
			return err
		}},
	}
	for _, tc := range cases {
		code, field, _ := details(t, tc.call())
		if code != codes.InvalidArgument || field != tc.field {
			t.Errorf("%s: %v field %q, want INVALID_ARGUMENT naming %s", tc.name, code, field, tc.field)
		}
	}
	tr2, err := c.task.ListTasks(ctx, &pb.ListTasksRequest{VmId: "a", PageSize: 1, PageToken: tr.NextPageToken})
	if err != nil || len(tr2.Tasks) != 1 || tr2.Tasks[0].Id != "t2" || tr2.NextPageToken != "" {
		t.Errorf("second task page: %v, %v; want t2 and no next page", tr2, err)
	}
}

// FuzzDecodeToken: a page token is untrusted input. Decoding never panics;
// what it accepts re-encodes to an equivalent token, and what it refuses is
// INVALID_ARGUMENT naming page_token.
func FuzzDecodeToken(f *testing.F) {
	f.Add(encodeToken(tokenVMs, "", "00000000-0000-4000-8000-000000000001"), "")
	f.Add(encodeToken(tokenTasks, "web|1", "2026-01-02T03:04:05.123456789Z", "t1"), "web|1")
	f.Add("not a token!", "")
	f.Fuzz(func(t *testing.T, tok, filter string) {
		for _, kind := range []struct {
			name  string
			parts int
		}{{tokenVMs, 1}, {tokenTasks, 2}} {
			key, err := decodeToken(tok, kind.name, filter, kind.parts)
			if err != nil {
				if code, field, _ := details(t, err); code != codes.InvalidArgument || field != "page_token" {
					t.Fatalf("refused token %q: %v field %q", tok, code, field)
				}
				continue
			}
			if len(key) != kind.parts {
				t.Fatalf("token %q: %d key parts, want %d", tok, len(key), kind.parts)
			}
			again, err := decodeToken(encodeToken(kind.name, filter, key...), kind.name, filter, kind.parts)
			if err != nil || strings.Join(again, "|") != strings.Join(key, "|") {
				t.Fatalf("token %q: key %q does not survive re-encoding: %q, %v", tok, key, again, err)
			}
			if kind.name == tokenTasks {
				parseTaskTokenKey(key) // must not panic
			}
		}
	})
}
