// Command xsload is a small xenstore load generator and embedded-server
// runner, for comparing our client with xenstore-read/xenstore-write on the
// same daemon (e.g. inside nested Xen) and for poking the embedded server
// with standard tools.
//
//	go run ./xenstore/internal/xsload -serve /tmp/xs.sock           # embedded server until SIGINT
//	go run ./xenstore/internal/xsload -socket /run/xenstored/socket -op read -n 20000 -c 1
//	go run ./xenstore/internal/xsload -op write -n 20000 -c 64     # 64 requests in flight
//	go run ./xenstore/internal/xsload -op tx -n 5000
//	go run ./xenstore/internal/xsload -op layout -n 10000 -c 8     # whole domain layouts (batched)
//	go run ./xenstore/internal/xsload -op layout-serial -n 1000    # the same, one round trip per op
//
// -socket defaults to $XENSTORED_PATH, then /run/xenstored/socket. Results go
// to stdout as one line: op, count, concurrency, seconds, ops/s.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore/xenstored"
)

func main() {
	serve := flag.String("serve", "", "run the embedded server on this unix socket until interrupted")
	sock := flag.String("socket", "", "daemon socket (default $XENSTORED_PATH or /run/xenstored/socket)")
	op := flag.String("op", "read", "read | write | tx | layout (batched, 4 round trips) | layout-serial (one round trip per op)")
	n := flag.Int("n", 10000, "number of operations (layout: domains)")
	conc := flag.Int("c", 1, "requests in flight on the one connection")
	base := flag.String("base", "/xsload", "subtree to work in (removed at the end)")
	timeout := flag.Duration("timeout", 10*time.Minute, "overall time limit")
	flag.Parse()
	if *serve != "" {
		if err := runServer(*serve); err != nil {
			fmt.Fprintln(os.Stderr, "xsload:", err)
			os.Exit(1)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *sock, *op, *n, *conc, *base); err != nil {
		fmt.Fprintln(os.Stderr, "xsload:", err)
		os.Exit(1)
	}
}

func runServer(path string) error {
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	s := xenstored.New(xenstored.Config{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	go func() { <-sig; s.Close() }()
	fmt.Fprintf(os.Stderr, "xsload: embedded xenstored on %s (XENSTORED_PATH=%s xenstore-ls)\n", path, path)
	err = s.Serve(l)
	if err == xenstored.ErrServerClosed {
		return nil
	}
	return err
}

func run(ctx context.Context, sock, op string, n, conc int, base string) error {
	if n <= 0 || conc <= 0 {
		return fmt.Errorf("-n and -c must be positive")
	}
	c, err := xenstore.Dial(ctx, sock)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Write(ctx, base+"/r", []byte("value")); err != nil {
		return err
	}
	defer c.Remove(context.Background(), base)
	var one func(i int) error
	switch op {
	case "read":
		one = func(int) error { _, err := c.Read(ctx, base+"/r"); return err }
	case "write":
		one = func(i int) error { return c.Write(ctx, fmt.Sprintf("%s/w/%d", base, i%1024), []byte("value")) }
	case "tx":
		// Existing nodes, so that concurrent transactions only conflict when
		// they touch the same one (creating nodes would change the parent).
		for i := 0; i < 1024; i++ {
			if err := c.Write(ctx, fmt.Sprintf("%s/t/%d", base, i), nil); err != nil {
				return err
			}
		}
		one = func(i int) error {
			p := fmt.Sprintf("%s/t/%d", base, i%1024)
			return c.Transaction(ctx, func(tx *xenstore.Tx) error {
				if _, err := tx.Read(ctx, base+"/r"); err != nil {
					return err
				}
				return tx.Write(ctx, p, []byte("v"))
			})
		}
	case "layout", "layout-serial":
		for _, p := range []string{"/local/domain", "/vm", "/xenopsd-ng"} {
			if err := c.Mkdir(ctx, base+p); err != nil {
				return err
			}
		}
		batched := op == "layout"
		one = func(i int) error { return writeLayout(ctx, c, base, 1+i%32000, batched) }
	default:
		return fmt.Errorf("-op %q: want read, write, tx, layout or layout-serial", op)
	}
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := one(i); err != nil {
					once.Do(func() { firstErr = fmt.Errorf("%s #%d: %w", op, i, err) })
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if firstErr != nil {
		return firstErr
	}
	fmt.Printf("op=%s n=%d c=%d seconds=%.3f ops/s=%.0f\n", op, n, conc, el.Seconds(), float64(n)/el.Seconds())
	return nil
}

// layoutOps returns the operations xenopsd-ng's domain build (domain/build.go
// writeLayout) performs for a 2-vCPU PV domain, under base so a run against a
// real daemon leaves the real domains alone: roots are the three subtree
// roots (re)created outside the transaction, body is the transaction.
func layoutOps(base string, domid int) (roots, body []xenstore.Op) {
	// The permission entries name dom0, not the (made-up) domid: C xenstored
	// answers SET_PERMS whose owner is a domain that does not exist with
	// ENOENT (observed in nested Xen, where no guest runs). Same requests,
	// same sizes.
	id := uint32(0)
	dom := fmt.Sprintf("%s/local/domain/%d", base, domid)
	vm := fmt.Sprintf("%s/vm/00000000-0000-0000-0000-%012d", base, domid)
	priv := fmt.Sprintf("%s/xenopsd-ng/00000000-0000-0000-0000-%012d", base, domid)
	noperm := []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}}
	roperm := []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}, {Domid: id, Access: xenstore.AccessRead}}
	rwperm := []xenstore.Perm{{Domid: id, Access: xenstore.AccessNone}}
	for _, r := range []struct {
		p     string
		perms []xenstore.Perm
	}{{dom, roperm}, {vm, roperm}, {priv, noperm}} {
		roots = append(roots, xenstore.RemoveOp(r.p), xenstore.WriteOp(r.p, nil), xenstore.SetPermsOp(r.p, r.perms))
	}
	add := func(p, v string, perms []xenstore.Perm) {
		body = append(body, xenstore.WriteOp(p, []byte(v)))
		if perms != nil {
			body = append(body, xenstore.SetPermsOp(p, perms))
		}
	}
	d := strconv.Itoa(domid)
	add(dom+"/vm", vm, nil)
	add(dom+"/name", "xsload-"+d, nil)
	add(dom+"/domid", d, nil)
	add(dom+"/cpu", "", roperm)
	add(dom+"/cpu/0/availability", "online", nil)
	add(dom+"/cpu/1/availability", "online", nil)
	add(dom+"/memory", "", roperm)
	add(dom+"/memory/static-max", "262144", nil)
	add(dom+"/memory/target", "262144", nil)
	add(dom+"/device", "", roperm)
	add(dom+"/device/suspend/event-channel", "", rwperm)
	add(dom+"/control", "", roperm)
	for _, f := range []string{"shutdown", "feature-poweroff", "feature-reboot", "feature-suspend", "sysrq"} {
		add(dom+"/control/"+f, "", rwperm)
	}
	add(dom+"/control/platform-feature-multiprocessor-suspend", "1", nil)
	add(dom+"/control/platform-feature-xs_reset_watches", "1", nil)
	for _, p := range []string{"data", "drivers", "feature", "attr", "error"} {
		add(dom+"/"+p, "", rwperm)
	}
	add(dom+"/store/port", "1", nil)
	add(dom+"/store/ring-ref", "1044476", nil)
	add(dom+"/console/port", "2", nil)
	add(dom+"/console/ring-ref", "1044477", nil)
	add(dom+"/console/type", "xenconsoled", nil)
	add(dom+"/console/limit", "1048576", nil)
	add(vm+"/uuid", "00000000-0000-0000-0000-"+fmt.Sprintf("%012d", domid), nil)
	add(vm+"/name", "xsload-"+d, nil)
	add(vm+"/domid", d, nil)
	add(priv+"/domid", d, nil)
	add(priv+"/type", "pv", nil)
	add(priv+"/created", "2026-01-01T00:00:00Z", nil)
	return roots, body
}

// writeLayout writes one domain's layout. batched: the roots in one
// Client.Batch and the transaction body in one Tx.Batch (4 round trips);
// otherwise one round trip per operation, as domain/build.go does today.
func writeLayout(ctx context.Context, c *xenstore.Client, base string, domid int, batched bool) error {
	roots, body := layoutOps(base, domid)
	if batched {
		if err := c.Batch(ctx, roots...); err != nil {
			return err
		}
		return c.Transaction(ctx, func(tx *xenstore.Tx) error { return tx.Batch(ctx, body...) })
	}
	for _, op := range roots {
		if err := c.Batch(ctx, op); err != nil {
			return err
		}
	}
	return c.Transaction(ctx, func(tx *xenstore.Tx) error {
		for _, op := range body {
			if err := tx.Batch(ctx, op); err != nil {
				return err
			}
		}
		return nil
	})
}
