package nested

import (
	"cmp"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// policyTB records what bootRetrying logs and where it fails the test;
// its Fatalf ends the goroutine as testing.T's does.
type policyTB struct {
	testing.TB
	logs  []string
	fatal string
}

func (p *policyTB) Helper() {}
func (p *policyTB) Logf(format string, args ...any) {
	p.logs = append(p.logs, fmt.Sprintf(format, args...))
}
func (p *policyTB) Fatalf(format string, args ...any) {
	p.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (p *policyTB) logged(s string) int {
	n := 0
	for _, l := range p.logs {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

// TestBootRetryPolicy runs bootRetrying against made-up boots and a
// made-up Xen console (no Xen needed): retries only after a triple fault
// of the boot's own domain (one, or two while the dump shows Xen's code
// segment), the xl control only for ours; a fault past those or any other
// failure fails the test.
func TestBootRetryPolicy(t *testing.T) {
	tf := "(XEN) d7v1 Triple fault - invoking HVM shutdown action 1\n(XEN) *** Dumping Dom7 vcpu#1 state: ***\n" +
		"(XEN) RIP:    e008:[<ffff82d0402044a5>]\n(XEN) ds: 0000   es: 0000   fs: 0000   gs: 0000   ss: 0000   cs: e008\n"
	// A dump with the guest's own RIP and code segment.
	guestTF := "(XEN) d7v0 Triple fault - invoking HVM shutdown action 1\n(XEN) *** Dumping Dom7 vcpu#0 state: ***\n" +
		"(XEN) RIP:    0010:[<ffffffff8103dddc>]\n(XEN) ds: 0000   es: 0000   fs: 0000   gs: 0000   ss: 0018   cs: 0010\n"
	saved := [3]any{readXenConsole, clearXenConsole, controlBoot}
	t.Cleanup(func() {
		readXenConsole = saved[0].(func() []byte)
		clearXenConsole = saved[1].(func())
		controlBoot = saved[2].(func(testing.TB, string, int) loopBoot)
	})
	var console string
	var clears, controls int
	readXenConsole = func() []byte { return []byte(console) }
	clearXenConsole = func() { clears++ }
	controlOutcome := "booted"
	controlBoot = func(testing.TB, string, int) loopBoot { controls++; return loopBoot{outcome: controlOutcome} }

	cases := []struct {
		name     string
		ours     bool
		console  string
		results  []error // what each attempt returns
		attempts int     // bootRetrying's answer; 0: it fails the test
		fatal    string  // in the failure
		controls int
		control  string // the xl control's outcome (default booted)
	}{
		{name: "first boot", ours: true, results: []error{nil}, attempts: 1},
		{name: "triple fault then booted", ours: true, console: tf,
			results: []error{died("7", "the VM is now domid 8"), nil}, attempts: 2, controls: 1},
		{name: "xl's triple fault: no control", console: tf,
			results: []error{died("7", "domain 7 gone"), nil}, attempts: 2},
		{name: "died without a triple fault", ours: true, console: "(XEN) d7v0 Domain crashed\n",
			results: []error{died("7", "domain 7 gone")}, fatal: "without a triple fault"},
		{name: "another domain's triple fault", ours: true, console: tf,
			results: []error{died("17", "domain 17 gone")}, fatal: "without a triple fault"},
		{name: "died before its domid was read", ours: true, console: tf,
			results: []error{died("", `the VM is now domid "9"`), nil}, attempts: 2, controls: 1},
		{name: "Xen's code segment twice, then booted", ours: true, console: tf,
			results: []error{died("7", "gone"), died("7", "gone"), nil}, attempts: 3, controls: 2},
		{name: "Xen's code segment three times: ours", ours: true, console: tf,
			results: []error{died("7", "gone"), died("7", "gone"), died("7", "gone")}, fatal: "builder bug", controls: 2},
		{name: "Xen's code segment three times: xl's", console: tf,
			results: []error{died("7", "gone"), died("7", "gone"), died("7", "gone")}, fatal: "the harness"},
		{name: "guest's code segment, then booted", ours: true, console: guestTF,
			results: []error{died("7", "gone"), nil}, attempts: 2, controls: 1},
		{name: "guest's code segment reproduced", ours: true, console: guestTF,
			results: []error{died("7", "gone"), died("7", "gone")}, fatal: "builder bug", controls: 1},
		{name: "guest's code segment, xl's control faulted too", ours: true, console: guestTF, control: "triple",
			results: []error{died("7", "gone"), died("7", "gone"), nil}, attempts: 3, controls: 2},
		{name: "guest's code segment, xl's guest: two retries", console: guestTF,
			results: []error{died("7", "gone"), died("7", "gone"), nil}, attempts: 3},
		{name: "guest's code segment three times: xl's", console: guestTF,
			results: []error{died("7", "gone"), died("7", "gone"), died("7", "gone")}, fatal: "the harness"},
		{name: "hang: no retry", ours: true, console: tf,
			results: []error{errors.New("no marker within 3m0s")}, fatal: "no marker"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			console, clears, controls, controlOutcome = c.console, 0, 0, cmp.Or(c.control, "booted")
			calls := 0
			p := &policyTB{TB: t}
			attempts := 0
			done := make(chan struct{})
			go func() {
				defer close(done)
				attempts = bootRetrying(p, guestBoot{what: "the guest", typ: "pvh", vcpus: 2, ours: c.ours}, func(attempt int) error {
					if attempt != calls+1 || calls >= len(c.results) {
						t.Errorf("boot called as attempt %d after %d calls (%d planned)", attempt, calls, len(c.results))
						return nil
					}
					calls++
					return c.results[attempt-1]
				})
			}()
			<-done
			if calls != len(c.results) {
				t.Errorf("boot ran %d times, want %d", calls, len(c.results))
			}
			if clears != calls {
				t.Errorf("Xen's console emptied %d times for %d boots", clears, calls)
			}
			if controls != c.controls {
				t.Errorf("%d xl control boots, want %d", controls, c.controls)
			}
			if c.fatal == "" {
				if p.fatal != "" || attempts != c.attempts {
					t.Errorf("attempts %d, failure %q; want %d attempts and no failure", attempts, p.fatal, c.attempts)
				}
				// one per fault, and one for the success after them
				want := c.attempts - 1
				if c.attempts > 1 {
					want++
				}
				if p.logged("NOTE: BOOT-RETRY") != want || p.logged("NOTE: BOOT-CONTROL") != c.controls {
					t.Errorf("NOTE lines: %d BOOT-RETRY (want %d), %d BOOT-CONTROL (want %d):\n%s", p.logged("NOTE: BOOT-RETRY"), want,
						p.logged("NOTE: BOOT-CONTROL"), c.controls, strings.Join(p.logs, "\n"))
				}
				return
			}
			if !strings.Contains(p.fatal, c.fatal) {
				t.Errorf("failure %q, want it to say %q", p.fatal, c.fatal)
			}
		})
	}
}
