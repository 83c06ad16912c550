package service

import (
	"context"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

type hostServer struct {
	*Server
	pb.UnimplementedHostServiceServer
}

var _ pb.HostServiceServer = hostServer{}

func (s hostServer) GetHost(ctx context.Context, _ *pb.GetHostRequest) (*pb.GetHostResponse, error) {
	h, err := s.m.Host(ctx)
	if err != nil {
		return nil, s.fail(ctx, "GetHost", err)
	}
	return &pb.GetHostResponse{Host: HostToPB(h, s.opts.Version)}, nil
}
