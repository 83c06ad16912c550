package e2e

import (
	"os"
	"sync"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
)

// The binaries are built once per test binary, by the first test that needs
// them (so `go test -list`, as scripts/test runs it to find fuzz targets,
// does not build them), and removed when the test binary exits.
var (
	buildOnce sync.Once
	built     *harness.Binaries
	buildErr  error
	binDir    string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binaries returns the built xenopsd-ng and xopsctl.
func binaries(t testing.TB) *harness.Binaries {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "xenopsd-e2e-bin"); buildErr != nil {
			return
		}
		built, buildErr = harness.Build(binDir)
	})
	if buildErr != nil {
		t.Fatalf("building the binaries: %v", buildErr)
	}
	return built
}
