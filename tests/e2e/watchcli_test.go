package e2e

import (
	"bufio"
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
)

// TestCLIEventsWatchAcrossRestart runs `xopsctl events watch -o json` while
// the daemon restarts: the CLI reconnects from the last revision it printed,
// so it prints every revision once, with no gap, before and after the
// restart.
func TestCLIEventsWatchAcrossRestart(t *testing.T) {
	bins := binaries(t)
	d := harness.StartDaemon(t, bins)
	c := newAPI(d.Conn())
	ctx := testCtx(t, 2*time.Minute)
	l, err := c.vm.ListVMs(ctx, &apiv1.ListVMsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	rev0 := l.GetRevision()

	wctx, stop := context.WithTimeout(ctx, time.Minute)
	defer stop()
	cmd := exec.CommandContext(wctx, bins.CLI, "--socket", d.Socket, "events", "watch",
		"--after", strconv.FormatUint(rev0, 10), "-o", "json")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stop()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()

	create := func(name string) {
		t.Helper()
		if _, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec(name, 32<<20)}); err != nil {
			t.Fatal(err)
		}
	}
	var revs []uint64
	names := map[string]int{}
	// waitFor reads the watcher's lines until it has printed name's creation.
	waitFor := func(name string) {
		t.Helper()
		for names[name] == 0 {
			select {
			case line, ok := <-lines:
				if !ok {
					cmd.Wait()
					t.Fatalf("events watch ended early; got revisions %v; stderr: %s", revs, stderr.String())
				}
				wr := &apiv1.WatchResponse{}
				if err := protojson.Unmarshal([]byte(line), wr); err != nil {
					t.Fatalf("events watch printed %q: %v", line, err)
				}
				if wr.GetResync() != nil {
					t.Fatalf("unexpected resync: %s", line)
				}
				revs = append(revs, wr.GetEvent().GetRevision())
				if vm := wr.GetEvent().GetVmChanged(); vm != nil {
					names[vm.GetSpec().GetName()]++
				}
			case <-wctx.Done():
				t.Fatalf("%s never seen; revisions %v, names %v; stderr: %s", name, revs, names, stderr.String())
			}
		}
	}
	create("w1")
	waitFor("w1") // the watcher is connected
	create("w2")
	d.Stop()
	d.Start()
	c = newAPI(d.Conn())
	create("w3")
	create("w4")
	waitFor("w4")
	for i, r := range revs {
		if r != rev0+uint64(i)+1 {
			t.Fatalf("revisions printed %v: gap or duplicate at %d (want %d)", revs, r, rev0+uint64(i)+1)
		}
	}
	for _, n := range []string{"w1", "w2", "w3", "w4"} {
		if names[n] != 1 {
			t.Errorf("creation of %s printed %d times, want once", n, names[n])
		}
	}
}
