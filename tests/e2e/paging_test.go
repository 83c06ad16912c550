package e2e

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
)

// TestListVMsOverFourMiB: VMs whose records add up to more than gRPC's
// default 4 MiB receive limit. A single ListVMs answer holding them all
// fails in a default client (RESOURCE_EXHAUSTED); paged, a default client
// gets a first page and a next_page_token, and `xopsctl vm list` follows the
// pages to list every VM.
func TestListVMsOverFourMiB(t *testing.T) {
	const nVMs = 8
	d := harness.StartDaemon(t, binaries(t))
	c := newAPI(d.Conn()) // a default client: 4 MiB receive limit
	ctx := testCtx(t, 3*time.Minute)
	value := strings.Repeat("v", 2048)
	total := 0
	var names []string
	for i := range nVMs {
		s := spec(fmt.Sprintf("big%d", i), 64<<20)
		s.XenstoreData = map[string]string{}
		for k := range 256 {
			s.XenstoreData[fmt.Sprintf("data/key%03d", k)] = value
		}
		r, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: s})
		if err != nil {
			t.Fatal(err)
		}
		total += proto.Size(r.GetVm())
		names = append(names, s.Name)
	}
	if total <= 4<<20 {
		t.Fatalf("the VMs add up to %d bytes, not more than 4 MiB: the test proves nothing", total)
	}

	first, err := c.vm.ListVMs(ctx, &apiv1.ListVMsRequest{})
	if err != nil {
		t.Fatalf("ListVMs with a default client, %d bytes of VMs: %v", total, err)
	}
	if n := len(first.GetVms()); n == 0 || n >= nVMs || first.GetNextPageToken() == "" {
		t.Errorf("first page: %d VMs, next_page_token %q; want some, not all, and a next page", n, first.GetNextPageToken())
	}

	out := cli(t, d, "vm", "list", "-o", "json")
	all := &apiv1.ListVMsResponse{}
	if err := protojson.Unmarshal([]byte(out), all); err != nil {
		t.Fatalf("vm list -o json: %v", err)
	}
	var listed []string
	for _, vm := range all.GetVms() {
		listed = append(listed, vm.GetSpec().GetName())
		if len(vm.GetSpec().GetXenstoreData()) != 256 {
			t.Errorf("%s listed with %d xenstore_data keys, want 256", vm.GetSpec().GetName(), len(vm.GetSpec().GetXenstoreData()))
		}
	}
	sort.Strings(listed)
	if strings.Join(listed, " ") != strings.Join(names, " ") || all.GetNextPageToken() != "" {
		t.Errorf("xopsctl vm list: %v (next %q), want %v", listed, all.GetNextPageToken(), names)
	}
	table := cli(t, d, "vm", "list")
	if rows := strings.Count(table, "\n"); rows != nVMs+1 {
		t.Errorf("vm list table: %d lines, want a header and %d VMs:\n%s", rows, nVMs, table)
	}

	_, err = c.vm.ListVMs(ctx, &apiv1.ListVMsRequest{PageToken: "bm90IGEgdG9rZW4"})
	checkStatus(t, err, codes.InvalidArgument, "page_token")
	_, err = c.task.ListTasks(ctx, &apiv1.ListTasksRequest{PageToken: first.GetNextPageToken()})
	checkStatus(t, err, codes.InvalidArgument, "page_token")
}
