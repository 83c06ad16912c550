package console

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestNestedXenconsoledLog checks the model against real xenconsoled, in
// dom0 of the nested Xen harness (tests/nested): a guest created with xl
// is logged to DefaultXenDir/guest-<name>.log, and following that log by
// name shows its output as it comes and ends once the domain is gone.
func TestNestedXenconsoledLog(t *testing.T) {
	if os.Getenv("NX_NESTED") != "1" {
		t.Skip("needs dom0 of the nested Xen harness (NX_NESTED=1): xl, xenconsoled --log=guest, /guest/vmlinuz")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	name := fmt.Sprintf("nxcon%d", os.Getpid())
	cfg := fmt.Sprintf(`name = "%s"
type = "pv"
kernel = "/guest/vmlinuz"
ramdisk = "/guest/initrd.gz"
extra = "console=hvc0 quiet nxmode=poweroff"
memory = 256
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
`, name)
	cfgPath := t.TempDir() + "/guest.cfg"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &Logs{Dir: DefaultXenDir, PollInterval: 100 * time.Millisecond, GoneGrace: 2 * time.Second}
	path, _ := logs.Path(name)
	os.Remove(path)
	if out, err := exec.CommandContext(ctx, "xl", "create", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("xl create: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("xl", "destroy", name).Run() })
	alive := func(ctx context.Context) (bool, error) {
		return exec.CommandContext(ctx, "xl", "domid", name).Run() == nil, nil
	}
	var got bytes.Buffer
	start := time.Now()
	var marker time.Duration
	err := logs.Stream(ctx, name, Options{Follow: true, Alive: alive}, func(c Chunk) error {
		got.Write(c.Data)
		if marker == 0 && strings.Contains(got.String(), "GUEST-BOOTED") {
			marker = time.Since(start)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("follow %s: %v; got %q", path, err, got.String())
	}
	if marker == 0 {
		t.Fatalf("followed log of %s ended without GUEST-BOOTED: %q", name, got.String())
	}
	t.Logf("xl create -> GUEST-BOOTED seen through the followed log: %v; follow ended %v after start (domain gone)", marker, time.Since(start))
	onDisk, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, got.Bytes()) {
		t.Fatalf("followed %d bytes, the log has %d", got.Len(), len(onDisk))
	}
}
