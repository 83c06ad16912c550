package service

import (
	"cmp"
	"context"
	"slices"
	"sort"
	"strings"
	"time"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

type taskServer struct {
	*Server
	pb.UnimplementedTaskServiceServer
}

var _ pb.TaskServiceServer = taskServer{}

func (s taskServer) GetTask(ctx context.Context, req *pb.GetTaskRequest) (*pb.GetTaskResponse, error) {
	if err := requireID("id", req.GetId()); err != nil {
		return nil, err
	}
	t, err := s.m.GetTask(ctx, req.GetId())
	if err != nil {
		return nil, s.fail(ctx, "GetTask", err)
	}
	return &pb.GetTaskResponse{Task: TaskToPB(t)}, nil
}

// ListTasks answers one page of tasks, oldest first (creation time, then
// id: a task's place in that order never changes); see page.go.
func (s taskServer) ListTasks(ctx context.Context, req *pb.ListTasksRequest) (*pb.ListTasksResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	var afterTime time.Time
	var afterID string
	if tok := req.GetPageToken(); tok != "" {
		key, err := decodeToken(tok, tokenTasks, req.GetVmId(), 2)
		if err != nil {
			return nil, err
		}
		if afterTime, afterID, err = parseTaskTokenKey(key); err != nil {
			return nil, err
		}
	}
	ts, err := s.m.ListTasks(ctx, req.GetVmId())
	if err != nil {
		return nil, s.fail(ctx, "ListTasks", err)
	}
	slices.SortFunc(ts, func(a, b domain.Task) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
	rest := ts
	if afterID != "" {
		first := sort.Search(len(ts), func(i int) bool {
			c := ts[i].CreatedAt.Compare(afterTime)
			return c > 0 || c == 0 && ts[i].ID > afterID
		})
		rest = ts[first:]
	}
	out := &pb.ListTasksResponse{}
	var more bool
	if out.Tasks, more = takePage(rest, size, TaskToPB); more {
		last := rest[len(out.Tasks)-1]
		out.NextPageToken = encodeToken(tokenTasks, req.GetVmId(), taskTokenKey(last.CreatedAt, last.ID)...)
	}
	return out, nil
}

func (s taskServer) CancelTask(ctx context.Context, req *pb.CancelTaskRequest) (*pb.CancelTaskResponse, error) {
	if err := requireID("id", req.GetId()); err != nil {
		return nil, err
	}
	t, err := s.m.CancelTask(ctx, req.GetId())
	if err != nil {
		return nil, s.fail(ctx, "CancelTask", err)
	}
	return &pb.CancelTaskResponse{Task: TaskToPB(t)}, nil
}

func (s taskServer) WaitTask(ctx context.Context, req *pb.WaitTaskRequest) (*pb.WaitTaskResponse, error) {
	if err := requireID("id", req.GetId()); err != nil {
		return nil, err
	}
	t, err := s.m.WaitTask(ctx, req.GetId())
	if err != nil {
		return nil, s.fail(ctx, "WaitTask", err)
	}
	return &pb.WaitTaskResponse{Task: TaskToPB(t)}, nil
}
