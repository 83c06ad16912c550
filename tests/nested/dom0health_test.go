package nested

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"hash/crc32"
	"strings"
	"testing"
	"time"
)

// crashes counts dom0 probe processes that died of a Go runtime crash.
type crashes struct {
	what      string
	probes, n int
	first     string
}

func (c *crashes) note(t *testing.T, what string, err error) {
	c.what = what
	c.probes++
	if err == nil {
		return
	}
	msg := err.Error()
	if strings.Contains(msg, "panic:") || strings.Contains(msg, "fatal error:") || strings.Contains(msg, "SIGSEGV") {
		c.n++
		if c.first == "" {
			c.first = tail([]byte(msg), 600)
		}
		return
	}
	t.Logf("probe during the %s failed: %v", what, err)
}

// integrityCheck copies a buffer of random bytes and compares the copy in a
// loop on its own goroutine, the way Go code moves memory (SSE registers),
// until stop is called. Under QEMU's TCG with Xen's lazy FPU switching
// this failed within a second of any guest starting to run (see the
// README); a failure means dom0 computes wrong results.
type integrityCheck struct {
	stopC       chan struct{}
	done        chan struct{}
	rounds, bad int
	firstBad    string
}

func startIntegrityCheck() *integrityCheck {
	c := &integrityCheck{stopC: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		a := make([]byte, 4<<20)
		rand.Read(a)
		sum := crc32.ChecksumIEEE(a)
		b := make([]byte, len(a))
		for {
			select {
			case <-c.stopC:
				return
			case <-time.After(20 * time.Millisecond):
			}
			clear(b)
			copy(b, a)
			c.rounds++
			if !bytes.Equal(a, b) || crc32.ChecksumIEEE(b) != sum {
				c.bad++
				if c.firstBad == "" {
					c.firstBad = fmt.Sprintf("round %d at %s", c.rounds, time.Now().Format(time.TimeOnly))
				}
			}
		}
	}()
	return c
}

// stop ends the check and fails t if any round went wrong.
func (c *integrityCheck) stop(t *testing.T, during string) {
	t.Helper()
	close(c.stopC)
	<-c.done
	if c.bad > 0 {
		t.Errorf("DOM0 COMPUTED WRONG RESULTS during the %s: %d of %d copy-and-compare rounds failed, first %s (lazy FPU switching under TCG? see tests/nested/README.md)", during, c.bad, c.rounds, c.firstBad)
		return
	}
	t.Logf("dom0 integrity check during the %s: %d copy-and-compare rounds, all correct", during, c.rounds)
}
