// Command xopsctl is the operator's command line for xenopsd-ng.
//
// It talks to the daemon's gRPC API (package xenopsd.v1) over the daemon's
// unix socket and offers one subcommand per API call: host info/stats; vm
// create/list/get/start/pause/unpause/shutdown/reboot/destroy/delete/console/stats; task
// list/get/cancel/wait; events watch. Lifecycle commands wait for their task
// and report progress on stderr unless --no-wait is given. Output is a
// readable table, or the API's protobuf JSON mapping (-o json), or the same as
// YAML (-o yaml).
//
// The command tree uses cobra: nested subcommands with generated help and
// POSIX flag parsing (persistent flags such as --socket inherited by every
// subcommand) without hand-written dispatch.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
