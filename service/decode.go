package service

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// A request that does not decode (a proto3 string holding invalid UTF-8,
// bytes that are not the message's wire format) is the caller's mistake,
// but grpc-go reports a decoding failure as INTERNAL, and sends that status
// itself before the handler sees the error. So the services are registered
// with handlers that receive the request's bytes undecoded (rawRequest) and
// decode them into the request type themselves, answering INVALID_ARGUMENT
// when that fails.

// registerDecoding registers impl for desc on r, every method receiving its
// request through decodeRequest.
func registerDecoding(r grpc.ServiceRegistrar, desc *grpc.ServiceDesc, impl any) {
	d := *desc
	d.Methods = make([]grpc.MethodDesc, len(desc.Methods))
	for i, m := range desc.Methods {
		h := m.Handler
		m.Handler = func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			return h(srv, ctx, func(req any) error { return decodeRequest(dec, req) }, ic)
		}
		d.Methods[i] = m
	}
	d.Streams = make([]grpc.StreamDesc, len(desc.Streams))
	for i, s := range desc.Streams {
		h := s.Handler
		s.Handler = func(srv any, stream grpc.ServerStream) error { return h(srv, decodingStream{stream}) }
		d.Streams[i] = s
	}
	r.RegisterService(&d, impl)
}

// decodingStream receives a streaming call's request through decodeRequest.
type decodingStream struct{ grpc.ServerStream }

func (s decodingStream) RecvMsg(m any) error { return decodeRequest(s.ServerStream.RecvMsg, m) }

// decodeRequest receives a request with recv and decodes it into req; a
// request that does not decode is INVALID_ARGUMENT saying why.
func decodeRequest(recv func(any) error, req any) error {
	msg, ok := req.(proto.Message)
	if !ok { // not a generated request type: nothing to improve on
		return recv(req)
	}
	var raw rawRequest
	if err := recv(&raw); err != nil {
		return err
	}
	if err := proto.Unmarshal(raw.b, msg); err != nil {
		return newStatus(codes.InvalidArgument, "", "malformed request: "+err.Error())
	}
	return nil
}

// rawRequest takes a request's bytes as they are. gRPC's proto codec
// unmarshals into it through protobuf's support for messages that decode
// themselves (an Unmarshal([]byte) error method, as pre-APIv2 generated
// code had), which cannot fail. TestMalformedRequestsAreInvalidArgument
// notices if a library update changes that.
type rawRequest struct{ b []byte }

func (r *rawRequest) Reset()         { r.b = nil }
func (r *rawRequest) String() string { return fmt.Sprintf("request of %d bytes", len(r.b)) }
func (*rawRequest) ProtoMessage()    {}

// Unmarshal keeps a copy of b (the codec reuses its buffer).
func (r *rawRequest) Unmarshal(b []byte) error {
	r.b = append(r.b[:0], b...)
	return nil
}
