package conformance

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// TestStandardTools points Debian's libxenstore tools (package
// xenstore-utils) at the daemon with XENSTORED_PATH. Skipped when they are
// not installed.
func TestStandardTools(t *testing.T) {
	const wideN = 110
	ls, err := exec.LookPath("xenstore-ls")
	if err != nil {
		t.Skip("xenstore-ls not installed (apt-get install xenstore-utils)")
	}
	e, c := setup(t)
	must(t, c.Transaction(ctx(t), func(tx *xenstore.Tx) error {
		for i := 1; i <= 3; i++ {
			p := fmt.Sprintf("%s/domain/%d", e.base, i)
			if err := tx.Write(ctx(t), p+"/name", []byte(fmt.Sprintf("vm-%d", i))); err != nil {
				return err
			}
			if err := tx.Write(ctx(t), p+"/memory/target", []byte("131072")); err != nil {
				return err
			}
		}
		return nil
	}))
	// Over 4096 bytes of names: libxenstore falls back to DIRECTORY_PART.
	// 110 names of 42 bytes (with the NUL): 4620 bytes. Few entries, because
	// xenstore-ls costs two requests per entry (32 s for 200 entries on C
	// xenstored under software-emulated nested Xen).
	for i := 0; i < wideN; i++ {
		write(t, c, fmt.Sprintf("%s/wide/entry-with-a-rather-long-name-for-ls-%03d", e.base, i), "")
	}
	try := func(name string, args ...string) (string, error) {
		t.Helper()
		// Generous: one process per call under software-emulated nested Xen.
		cx, cancel := context.WithTimeout(context.Background(), 6*waitTimeout)
		defer cancel()
		cmd := exec.CommandContext(cx, name, args...)
		cmd.Env = append(os.Environ(), "XENSTORED_PATH="+e.socket)
		t0 := time.Now()
		out, err := cmd.CombinedOutput()
		t.Logf("%s %v: %v after %v", name, args, err, time.Since(t0).Round(time.Millisecond))
		return string(out), err
	}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := try(name, args...)
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return out
	}
	out := run(ls, "-p", e.base+"/domain")
	t.Logf("xenstore-ls -p %s/domain:\n%s", e.base, out)
	for i := 1; i <= 3; i++ {
		if !strings.Contains(out, fmt.Sprintf("name = \"vm-%d\"", i)) {
			t.Fatalf("xenstore-ls output lacks vm-%d:\n%s", i, out)
		}
	}
	if !strings.Contains(out, "target = \"131072\"") || !strings.Contains(out, "(n0)") {
		t.Fatalf("xenstore-ls output lacks memory/target or perms:\n%s", out)
	}
	if lst, err := exec.LookPath("xenstore-list"); err == nil {
		out, err := try(lst, e.base+"/wide")
		if e.daemon == OXenstored {
			record(t, "xenstore-list of a directory over 4096 bytes", err)
		} else if n := strings.Count(out, "entry-with-a-rather-long-name-for-ls-"); err != nil || n != wideN {
			t.Fatalf("xenstore-list of a wide directory: %v, %d of %d entries\n%.500s", err, n, wideN, out)
		}
	}
	out, err = try(ls, e.base+"/wide")
	if e.daemon == OXenstored {
		// oxenstored answers DIRECTORY with a reply over 4096 bytes, which
		// libxenstore 4.17 refuses ("xs_directory (...): Bad file
		// descriptor", observed in nested Xen): recorded, not asserted.
		record(t, "xenstore-ls of a directory over 4096 bytes", err)
		if err != nil {
			t.Logf("RECORD output: %.300s", out)
		}
	} else if n := strings.Count(out, "entry-with-a-rather-long-name-for-ls-"); err != nil || n != wideN {
		t.Fatalf("xenstore-ls of a wide directory: %v, listed %d of %d entries\n%.500s", err, n, wideN, out)
	}
	if rd, err := exec.LookPath("xenstore-read"); err == nil {
		if got := strings.TrimSpace(run(rd, e.base+"/domain/2/name")); got != "vm-2" {
			t.Fatalf("xenstore-read = %q", got)
		}
	}
	if wr, err := exec.LookPath("xenstore-write"); err == nil {
		run(wr, e.base+"/from-tool", "hi")
		if got := read(t, c, e.base+"/from-tool"); got != "hi" {
			t.Fatalf("xenstore-write stored %q", got)
		}
	}
}
