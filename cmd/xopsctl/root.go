package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/defaults"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

// app holds what every subcommand shares: the global flags, the output
// streams and, once a command needs it, the connection to the daemon.
type app struct {
	socket  string
	timeout time.Duration
	output  string
	remote  remoteFlags

	stdout, stderr io.Writer

	conn *grpc.ClientConn
}

// usageError is a mistake in the command line (exit status 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// run executes one xopsctl command line and returns the exit status:
// 0 success, 1 the daemon or the operation failed, 2 bad command line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if a.conn != nil {
		a.conn.Close()
	}
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "xopsctl: %s\n", describeError(err, a.socket))
	var ue *usageError
	if errors.As(err, &ue) || isFlagError(err) {
		return 2
	}
	return 1
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "xopsctl",
		Short: "Operate xenopsd-ng: VMs, tasks, events and the host",
		Long: `xopsctl drives the xenopsd-ng daemon through its gRPC API.

VMs are named by id (UUID) or name. Lifecycle commands (start, pause, unpause,
shutdown, reboot, destroy) wait for their task and print progress on stderr;
--no-wait prints the task id instead.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			switch a.output {
			case "table", "json", "yaml":
			default:
				return usagef("--output: %q is not one of table, json, yaml", a.output)
			}
			if a.timeout < 0 {
				return usagef("--timeout: must not be negative")
			}
			return nil
		},
	}
	socket := os.Getenv("XOPSCTL_SOCKET")
	if socket == "" {
		socket = defaults.Socket
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.socket, "socket", socket, "daemon's unix socket (env XOPSCTL_SOCKET)")
	pf.DurationVar(&a.timeout, "timeout", time.Minute,
		"limit for the whole command, waiting for tasks included (0 = none; events watch: none unless set)")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table, json or yaml")
	a.remote.register(pf)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef("%v", err) })

	root.AddCommand(a.hostCmd(), a.vmCmd(), a.taskCmd(), a.eventsCmd())
	return root
}

// isFlagError reports cobra's own argument-count and unknown-command errors,
// which it returns as plain errors.
func isFlagError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "unknown flag", "unknown shorthand"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// dial connects to the daemon once per invocation.
func (a *app) dial() (*grpc.ClientConn, error) {
	if a.conn != nil {
		return a.conn, nil
	}
	if a.remote.address != "" {
		conn, err := a.remote.dial()
		if err != nil {
			return nil, err
		}
		a.conn = conn
		return conn, nil
	}
	if _, err := os.Stat(a.socket); err != nil {
		return nil, fmt.Errorf("cannot reach xenopsd-ng at %s: %w (is the daemon running? set --socket or XOPSCTL_SOCKET)", a.socket, err)
	}
	// gRPC's unix:// target takes an absolute path ("unix://run/x.sock"
	// would name the authority "run"): resolve a relative --socket first.
	path, err := filepath.Abs(a.socket)
	if err != nil {
		return nil, fmt.Errorf("--socket %s: %w", a.socket, err)
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", a.socket, err)
	}
	a.conn = conn
	return conn, nil
}

// ctx bounds a command by --timeout (when set).
func (a *app) ctx(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return a.ctxWith(cmd, a.timeout)
}

func (a *app) ctxWith(cmd *cobra.Command, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(cmd.Context())
	}
	return context.WithTimeout(cmd.Context(), d)
}

// clients bundles the API stubs.
type clients struct {
	host  apiv1.HostServiceClient
	vm    apiv1.VMServiceClient
	task  apiv1.TaskServiceClient
	event apiv1.EventServiceClient
	stats apiv1.StatsServiceClient
}

func (a *app) clients() (*clients, error) {
	conn, err := a.dial()
	if err != nil {
		return nil, err
	}
	return &clients{
		host:  apiv1.NewHostServiceClient(conn),
		vm:    apiv1.NewVMServiceClient(conn),
		task:  apiv1.NewTaskServiceClient(conn),
		event: apiv1.NewEventServiceClient(conn),
		stats: apiv1.NewStatsServiceClient(conn),
	}, nil
}

// call runs do with the daemon's API clients and the command's context
// (bounded by --timeout).
func (a *app) call(cmd *cobra.Command, do func(ctx context.Context, c *clients) error) error {
	c, err := a.clients()
	if err != nil {
		return err
	}
	ctx, cancel := a.ctx(cmd)
	defer cancel()
	return do(ctx, c)
}
