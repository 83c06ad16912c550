//go:build tools

// Package tools pins the protobuf code generators through the main module's
// go.mod, so generated code always matches the runtime it links against.
// buf itself lives in the separate module under tools/buf.
package tools

import (
	_ "google.golang.org/grpc/cmd/protoc-gen-go-grpc"
	_ "google.golang.org/protobuf/cmd/protoc-gen-go"
)
