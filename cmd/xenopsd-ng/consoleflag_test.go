package main

import (
	"io"
	"testing"
)

// TestConsoleLogDirDefaults: xenconsoled's directory on Xen, the sim host's
// console/ on the simulator, and --console-log-dir wins over both.
func TestConsoleLogDirDefaults(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--backend=xen"}, "/var/log/xen/console"},
		{[]string{"--backend=sim", "--state-dir=/s"}, "/s/sim/console"},
		{[]string{"--backend=sim", "--sim-dir=/m"}, "/m/console"},
		{[]string{"--backend=xen", "--console-log-dir=/c"}, "/c"},
		{[]string{"--backend=sim", "--console-log-dir=/c"}, "/c"},
	} {
		c, err := parseFlags(tc.args, io.Discard)
		if err != nil || c.consoleLogDir != tc.want {
			t.Errorf("%v: console log dir %q, %v; want %q", tc.args, c.consoleLogDir, err, tc.want)
		}
	}
}
