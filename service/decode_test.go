package service

import (
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// rawCodec sends and receives bytes as they are, to put on the wire what
// the protobuf library would refuse to marshal.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// stringField is a message holding one length-delimited field.
func stringField(num protowire.Number, v []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
}

// TestMalformedRequestsAreInvalidArgument: requests gRPC cannot decode
// (invalid UTF-8 in a string, bytes that are not the message) are
// INVALID_ARGUMENT naming the problem, for unary and streaming methods,
// and reach no handler.
func TestMalformedRequestsAreInvalidArgument(t *testing.T) {
	f := newFake()
	c := serve(t, f, Options{})
	ctx := ctxT(t)
	badName := stringField(1, stringField(2, []byte("web\xff"))) // CreateVMRequest.spec.name
	for _, tc := range []struct {
		name, method string
		stream       bool
		req          []byte
		want         string
	}{
		{"invalid UTF-8 in spec.name", "/xenopsd.v1.VMService/CreateVM", false, badName, "UTF-8"},
		{"invalid UTF-8 in id", "/xenopsd.v1.VMService/GetVM", false, stringField(1, []byte("\xc3\x28")), "UTF-8"},
		{"invalid UTF-8 deep in a message", "/xenopsd.v1.VMService/CreateVM", false,
			stringField(1, stringField(13, append(stringField(1, []byte("vm-data/a")), stringField(2, []byte("\xff"))...))), "UTF-8"},
		{"truncated message", "/xenopsd.v1.VMService/CreateVM", false, badName[:len(badName)-2], "malformed request"},
		{"not wire format", "/xenopsd.v1.VMService/GetVM", false, []byte{0xff, 0xff, 0xff}, "malformed request"},
		{"invalid UTF-8, streaming", "/xenopsd.v1.VMService/StreamConsole", true, stringField(1, []byte("\xff")), "UTF-8"},
		{"invalid UTF-8 in a task id", "/xenopsd.v1.TaskService/GetTask", false, stringField(1, []byte("\xff")), "UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.stream {
				var st grpc.ClientStream
				st, err = c.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, tc.method, grpc.ForceCodec(rawCodec{}))
				if err == nil {
					if err = st.SendMsg(&tc.req); err == nil {
						st.CloseSend()
						var out []byte
						err = st.RecvMsg(&out)
					}
				}
			} else {
				var out []byte
				err = c.conn.Invoke(ctx, tc.method, &tc.req, &out, grpc.ForceCodec(rawCodec{}))
			}
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.want) {
				t.Fatalf("got %v: %q, want INVALID_ARGUMENT mentioning %q", st.Code(), st.Message(), tc.want)
			}
		})
	}
	if calls := f.Calls(); len(calls) != 0 {
		t.Errorf("malformed requests reached the manager: %v", calls)
	}
}
