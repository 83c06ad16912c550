package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

// listPageSize is the page size xopsctl asks for; the daemon may answer
// smaller pages (it bounds a page's bytes too) and caps it.
const listPageSize = 1000

// listVMs reads every page of ListVMs into one answer: all the VMs, sorted
// by name for people, and the first page's revision (a Watch from it misses
// nothing that changed while the pages were read).
func listVMs(ctx context.Context, c *clients) (*apiv1.ListVMsResponse, error) {
	all := &apiv1.ListVMsResponse{}
	err := pages(func(token string) (string, error) {
		resp, err := c.vm.ListVMs(ctx, &apiv1.ListVMsRequest{PageSize: listPageSize, PageToken: token})
		if err != nil {
			return "", err
		}
		if token == "" {
			all.Revision = resp.GetRevision()
		}
		all.Vms = append(all.Vms, resp.GetVms()...)
		return resp.GetNextPageToken(), nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(all.Vms, func(a, b *apiv1.VM) int { return strings.Compare(a.GetSpec().GetName(), b.GetSpec().GetName()) })
	return all, nil
}

// listTasks reads every page of ListTasks (oldest task first).
func listTasks(ctx context.Context, c *clients, vmID string) (*apiv1.ListTasksResponse, error) {
	all := &apiv1.ListTasksResponse{}
	err := pages(func(token string) (string, error) {
		resp, err := c.task.ListTasks(ctx, &apiv1.ListTasksRequest{VmId: vmID, PageSize: listPageSize, PageToken: token})
		if err != nil {
			return "", err
		}
		all.Tasks = append(all.Tasks, resp.GetTasks()...)
		return resp.GetNextPageToken(), nil
	})
	if err != nil {
		return nil, err
	}
	return all, nil
}

// pages calls next with each page token, starting from none, until it
// returns no next token. A daemon that hands out a token twice would loop
// forever: that is an error.
func pages(next func(token string) (string, error)) error {
	seen := map[string]bool{}
	token := ""
	for {
		t, err := next(token)
		if err != nil {
			return err
		}
		if t == "" {
			return nil
		}
		if seen[t] {
			return fmt.Errorf("the daemon returned page token %q twice; giving up", t)
		}
		seen[t] = true
		token = t
	}
}
