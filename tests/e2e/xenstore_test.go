package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
)

// TestXenstoreLs points Debian's xenstore-ls (package xenstore-utils, which
// scripts/test installs) at the sim host's embedded xenstored through
// XENSTORED_PATH and checks it lists the domains the daemon created.
func TestXenstoreLs(t *testing.T) {
	xls, err := exec.LookPath("xenstore-ls")
	if err != nil {
		t.Skip("xenstore-ls not installed (Debian package xenstore-utils; scripts/test installs it)")
	}
	d := harness.StartDaemon(t, binaries(t))
	c := newAPI(d.Conn())
	ctx := testCtx(t, 2*time.Minute)
	names := []string{"xs-a", "xs-b"}
	domids := map[string]uint32{}
	for _, name := range names {
		if _, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec(name, 32<<20)}); err != nil {
			t.Fatal(err)
		}
		r, err := c.vm.StartVM(ctx, &apiv1.StartVMRequest{Id: name, Wait: true})
		mustSucceed(t, "start "+name, r.GetTask(), err)
		domids[name] = cliVM(t, d, name).GetDomid()
	}

	sock := d.Sim().XenstoredPath()
	if sock == "" {
		sock = filepath.Join(d.SimDir, "xenstored.sock")
	}
	run := func(args ...string) string {
		t.Helper()
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(cctx, xls, args...)
		cmd.Env = append(os.Environ(), "XENSTORED_PATH="+sock)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("XENSTORED_PATH=%s xenstore-ls %s: %v\n%s", sock, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	out := run("-f", "/local/domain")
	for name, domid := range domids {
		want := fmt.Sprintf("/local/domain/%d/name = \"%s\"", domid, name)
		if !strings.Contains(out, want) {
			t.Errorf("xenstore-ls -f /local/domain does not show %q:\n%s", want, out)
		}
	}
	// pyxs (Debian python3-pyxs, a pure-Python client) sees the same domains.
	if _, err := os.Stat(pyxsModule); err != nil {
		t.Logf("pyxs check skipped: %s not installed (Debian python3-pyxs; scripts/test installs it)", pyxsModule)
	} else {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(cctx, "/usr/bin/python3", "-c", pyxsListDomains, sock).CombinedOutput()
		if err != nil {
			t.Fatalf("pyxs listing %s: %v\n%s", sock, err, out)
		}
		for name, domid := range domids {
			if want := fmt.Sprintf("%d %s\n", domid, name); !strings.Contains(string(out), want) {
				t.Errorf("pyxs does not list domain %d named %s:\n%s", domid, name, out)
			}
		}
	}

	vm := cliVM(t, d, "xs-a")
	if out := run("-f", "/vm"); !strings.Contains(out, "/vm/"+vm.GetId()) {
		t.Errorf("xenstore-ls -f /vm does not show /vm/%s:\n%s", vm.GetId(), out)
	}

	// Destroy removes the domain's subtree.
	r, err := c.vm.DestroyVM(ctx, &apiv1.DestroyVMRequest{Id: "xs-a", Wait: true})
	mustSucceed(t, "destroy xs-a", r.GetTask(), err)
	gone := fmt.Sprintf("/local/domain/%d/", domids["xs-a"])
	eventually(t, 10*time.Second, func() string {
		if out := run("-f", "/local/domain"); strings.Contains(out, gone) {
			return "xenstore still has " + gone + " after destroy"
		}
		return ""
	})
}

// pyxsModule is where Debian's python3-pyxs installs the client.
const pyxsModule = "/usr/lib/python3/dist-packages/pyxs"

// pyxsListDomains prints "<domid> <name>" for every domain under
// /local/domain, read through pyxs from the socket given as argv[1].
const pyxsListDomains = `
import sys
from pyxs import Client
with Client(unix_socket_path=sys.argv[1]) as c:
    for d in c.list(b"/local/domain"):
        print(d.decode(), c[b"/local/domain/" + d + b"/name"].decode())
`
