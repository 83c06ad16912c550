// Package service is the gRPC face of the daemon: thin adapters from the
// xenopsd.v1 API (package api/xenopsd/v1) to the VM lifecycle core (package
// domain).
//
// The model: every RPC validates what only the API layer can know (enum
// values the core has no name for, negative durations, missing ids), converts
// the request to domain types (convert.go, the one place proto and domain
// types meet), calls the core through the small Manager interface defined
// here, and converts the answer back. Core errors (*domain.Error) become gRPC
// statuses with google.rpc details (errors.go): INVALID_ARGUMENT carries a
// google.rpc.BadRequest naming the request field; every error carries a
// google.rpc.ErrorInfo (domain "xenopsd-ng", reason = the canonical code).
//
// gRPC and protobuf types stop here: the core never sees them.
package service
