package nested

import (
	"bytes"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// Reading the guests' console logs that xenconsoled writes in dom0.

// marker is what waitMarker found.
type marker struct {
	booted, alive time.Time // when GUEST-BOOTED and the first GUEST-ALIVE were seen
	line          string
}

// waitMarker polls a guest's console log until GUEST-BOOTED and a
// GUEST-ALIVE line are there, until the deadline, or until gone reports the
// guest is no longer running as it was (then it returns what it saw).
func waitMarker(logPath string, from int64, deadline time.Time, gone func() string) (marker, string) {
	var m marker
	lastCheck := time.Now()
	for time.Now().Before(deadline) {
		b := readFrom(logPath, from)
		if m.booted.IsZero() {
			if j := bytes.Index(b, []byte("GUEST-BOOTED")); j >= 0 {
				m.booted = time.Now()
				line := b[j:]
				if k := bytes.IndexByte(line, '\n'); k >= 0 {
					line = line[:k]
				}
				m.line = string(bytes.TrimSpace(line))
			}
		}
		if !m.booted.IsZero() && bytes.Contains(b, []byte("GUEST-ALIVE")) {
			m.alive = time.Now()
			return m, ""
		}
		if time.Since(lastCheck) > 3*time.Second {
			lastCheck = time.Now()
			if why := gone(); why != "" {
				return m, why
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return m, "no marker within " + markerWait.String()
}

// readFrom returns a file's bytes from offset from (nil if absent).
func readFrom(path string, from int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(f, 16<<20))
	return b
}

func fileSize(path string) int64 {
	if fi, err := os.Stat(path); err == nil {
		return fi.Size()
	}
	return 0
}

// aliveCount is the last GUEST-ALIVE number in b (-1: none).
func aliveCount(b []byte) int {
	i := bytes.LastIndex(b, []byte("GUEST-ALIVE "))
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+len("GUEST-ALIVE "):]))
	if len(f) == 0 {
		return -1
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return -1
	}
	return n
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// wxCheck returns Linux's verdict on its own page tables once booted
// ("x86/mm: Checked W+X mappings: passed, ..." or "... FAILED, ..."), empty
// if the console has none.
func wxCheck(b []byte) string {
	i := bytes.Index(b, []byte("Checked W+X mappings: "))
	if i < 0 {
		return ""
	}
	line := b[i:]
	if j := bytes.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	return string(bytes.TrimSpace(line))
}
