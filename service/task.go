package service

import (
	"context"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
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

func (s taskServer) ListTasks(ctx context.Context, req *pb.ListTasksRequest) (*pb.ListTasksResponse, error) {
	ts, err := s.m.ListTasks(ctx, req.GetVmId())
	if err != nil {
		return nil, s.fail(ctx, "ListTasks", err)
	}
	out := &pb.ListTasksResponse{Tasks: make([]*pb.Task, 0, len(ts))}
	for _, t := range ts {
		out.Tasks = append(out.Tasks, TaskToPB(t))
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
