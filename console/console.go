// Package console reads the guest console logs of a host.
//
// The model mirrors Xen's: the guest writes to its console ring, and
// xenconsoled in dom0 (started with --log=guest --log-dir=DIR) copies what
// it reads into DIR/guest-<name>.log, where <name> is the domain's xenstore
// /local/domain/<domid>/name when xenconsoled first sees the domain. The
// sim host plays xenconsoled for simulated guests and writes the same
// files under <sim-dir>/console. The daemon never holds console output in
// memory: it streams those files, which outlive the domain (a rebuilt
// domain of the same VM appends to the same file), so the last output of a
// crashed or halted VM stays available for post-mortem.
//
// A log is named after the VM's name, but it belongs to the VM: names are
// unique among a host's VMs only at one moment, so a later VM may take a
// deleted VM's name. Logs.Remove deletes a VM's log when the VM is deleted,
// Logs.Rename follows a VM's change of name, Logs.RemoveStale clears such a
// log before a VM's domain is built, and Options.NotBefore (the VM's creation time) makes a stream refuse a
// log nothing has written to since the VM existed: one left behind by an
// earlier VM of that name (e.g. when the daemon stopped between deleting
// the VM and its log).
//
// Logs.Stream reads a VM's log from an offset or its last N bytes and, in
// follow mode, keeps polling it for new output (like tail -F: a truncated
// or replaced log is read again from its start) until the VM's domain is
// gone or the context ends.
package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

// Defaults.
const (
	// DefaultXenDir is where xenconsoled writes guest logs in dom0 (as the
	// nested harness and xencommons start it).
	DefaultXenDir = "/var/log/xen/console"
	// SimSubdir is the console log directory inside a sim host's directory.
	SimSubdir = "console"

	defaultPoll      = 200 * time.Millisecond
	defaultGoneGrace = time.Second
	chunkSize        = 32 << 10
)

// Logs is a console log directory.
type Logs struct {
	// Dir holds guest-<name>.log files.
	Dir string
	// PollInterval is how often a followed log is checked for new output
	// (0: 200ms).
	PollInterval time.Duration
	// GoneGrace is how long Alive must keep reporting false before a
	// follow ends, so that a domain being rebuilt (on_reboot=restart) does
	// not end it and the last output is still read (0: 1s).
	GoneGrace time.Duration
}

// FileName is the log file name xenconsoled uses for a domain named name.
func FileName(name string) string { return "guest-" + name + ".log" }

// Path returns the log file of the VM named name. The name must be a
// single path element (VM names are; see domain.Spec validation).
func (l *Logs) Path(name string) (string, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return "", domain.InvalidField("id", "VM name %q cannot name a console log file", name)
	}
	return filepath.Join(l.Dir, FileName(name)), nil
}

// Remove deletes the log of the VM named name (a missing log is fine): the
// VM was deleted, and a later VM of that name must not read its output.
func (l *Logs) Remove(name string) error {
	path, err := l.Path(name)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove console log of VM %q: %w", name, err)
	}
	return nil
}

// RemoveStale removes the log of the VM named name if nothing has written
// it since created, the VM's creation time: it is an earlier VM's of the
// same name (left when the daemon stopped between deleting that VM and its
// log), which the VM's guest must not append to. Call it before the VM's
// domain is built.
func (l *Logs) RemoveStale(name string, created time.Time) error {
	path, err := l.Path(name)
	if err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && !writtenBefore(fi, created)) {
		return nil
	}
	if err == nil {
		err = os.Remove(path)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale console log of VM %q: %w", name, err)
	}
	return nil
}

// Rename moves the log of a VM renamed from one name to another (a missing
// log is fine), replacing any log left under the new name: it is the
// renamed VM's output, and a later VM taking the old name must not read it.
func (l *Logs) Rename(from, to string) error {
	src, err := l.Path(from)
	if err != nil {
		return err
	}
	dst, err := l.Path(to)
	if err != nil {
		return err
	}
	if err := os.Rename(src, dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("rename console log of VM %q to %q: %w", from, to, err)
	}
	return nil
}

// Options say what part of a log to stream.
type Options struct {
	// Follow keeps streaming new output until Alive reports the domain gone
	// (for GoneGrace) or the context ends.
	Follow bool
	// TailBytes starts that many bytes before the end (0: use Offset).
	TailBytes uint64
	// Offset starts at that byte offset; beyond the end is an error
	// naming "offset". Cannot be combined with TailBytes.
	Offset uint64
	// NotBefore is when the VM was created (zero: not checked). A log last
	// written before then is an earlier VM's of the same name, and is
	// treated as missing.
	NotBefore time.Time
	// Alive reports whether the VM still has a domain, i.e. whether its
	// console can still grow. nil: follow until the context ends. It also
	// decides whether a follow waits for a log that does not exist yet.
	Alive func(ctx context.Context) (bool, error)
}

// Chunk is a piece of console output.
type Chunk struct {
	Data   []byte // only valid during the send call
	Offset uint64 // byte offset of Data in the log
	// Restarted: the log was truncated or replaced while followed; Data is
	// from the start of the new log.
	Restarted bool
}

// Stream sends the console log of the VM named name, in chunks of at most
// 32 KiB, to send. Errors are *domain.Error (NotFound naming "id" when
// there is no log and the VM cannot write one, InvalidArgument naming the
// bad option), send's error as it is, or the context's error.
func (l *Logs) Stream(ctx context.Context, name string, opts Options, send func(Chunk) error) error {
	if opts.TailBytes > 0 && opts.Offset > 0 {
		return domain.InvalidField("tail_bytes", "cannot be combined with offset")
	}
	path, err := l.Path(name)
	if err != nil {
		return err
	}
	st := &stream{l: l, path: path, name: name, opts: opts, send: send, buf: make([]byte, chunkSize)}
	defer st.close()
	if err := st.open(ctx); err != nil {
		return err
	}
	return st.run(ctx)
}

func (l *Logs) poll() time.Duration {
	if l.PollInterval > 0 {
		return l.PollInterval
	}
	return defaultPoll
}

func (l *Logs) goneGrace() time.Duration {
	if l.GoneGrace > 0 {
		return l.GoneGrace
	}
	return defaultGoneGrace
}

// stream is one Stream call's state.
type stream struct {
	l         *Logs
	path      string
	name      string
	opts      Options
	send      func(Chunk) error
	buf       []byte
	f         *os.File
	fi        os.FileInfo // identity of f, for rotation checks
	pos       int64
	restarted bool
	goneSince time.Time // zero while alive
}

func (s *stream) close() {
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

// alive asks opts.Alive; without it the domain is assumed alive.
func (s *stream) alive(ctx context.Context) (bool, error) {
	if s.opts.Alive == nil {
		return true, nil
	}
	ok, err := s.opts.Alive(ctx)
	if err != nil {
		return false, err
	}
	return ok, nil
}

// open opens the log and positions it per the options. A missing log is
// NotFound unless following a live VM, in which case open waits for it.
func (s *stream) open(ctx context.Context) error {
	for {
		f, err := s.openOwn()
		if f != nil {
			s.f = f
			break
		}
		if err != nil {
			return err
		}
		notFound := domain.Errorf(domain.CodeNotFound, "VM %q has no console log (%s): its guest has printed nothing yet, or xenconsoled is not logging guests there", s.name, s.path)
		notFound.Field = "id"
		if !s.opts.Follow {
			return notFound
		}
		ok, err := s.alive(ctx)
		if err != nil {
			return err
		}
		if !ok {
			return notFound
		}
		if err := s.sleep(ctx); err != nil {
			return err
		}
	}
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("console log of VM %q: %w", s.name, err)
	}
	s.fi = fi
	size := uint64(fi.Size())
	switch {
	case s.opts.TailBytes > 0:
		if s.opts.TailBytes < size {
			s.pos = int64(size - s.opts.TailBytes)
		}
	case s.opts.Offset > size:
		return domain.InvalidField("offset", "%d is beyond the end of the console log (%d bytes)", s.opts.Offset, size)
	default:
		s.pos = int64(s.opts.Offset)
	}
	return nil
}

// mtimeSlack is how far a file's modification time may lag the clock that
// stamped the VM's creation: Linux stamps files from a coarse clock, up to
// a scheduler tick (1-10 ms) behind time.Now, so a log written just after a
// VM was created can carry an earlier time.
const mtimeSlack = 50 * time.Millisecond

// writtenBefore reports whether the log was last written before t, allowing
// for the coarse file clock (mtimeSlack).
func writtenBefore(fi fs.FileInfo, t time.Time) bool {
	return fi.ModTime().Before(t.Add(-mtimeSlack))
}

// openOwn opens the log if it exists and is the VM's (see NotBefore);
// otherwise it returns nil and no error.
func (s *stream) openOwn() (*os.File, error) {
	f, err := os.Open(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("console log of VM %q: %w", s.name, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("console log of VM %q: %w", s.name, err)
	}
	if writtenBefore(fi, s.opts.NotBefore) {
		f.Close()
		return nil, nil // an earlier VM's of the same name
	}
	return f, nil
}

// run streams until EOF (no follow) or until the domain is gone.
func (s *stream) run(ctx context.Context) error {
	for {
		if err := s.drain(ctx); err != nil {
			return err
		}
		if !s.opts.Follow {
			return nil
		}
		changed, err := s.checkReplaced()
		if err != nil {
			return err
		}
		if changed {
			continue // read the new log at once
		}
		ok, err := s.alive(ctx)
		if err != nil {
			return err
		}
		switch {
		case ok:
			s.goneSince = time.Time{}
		case s.goneSince.IsZero():
			s.goneSince = time.Now()
		case time.Since(s.goneSince) >= s.l.goneGrace():
			// Gone for the whole grace: read what came last and stop.
			return s.drain(ctx)
		}
		if err := s.sleep(ctx); err != nil {
			return err
		}
	}
}

// drain sends everything from pos to the current end of the file.
func (s *stream) drain(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := s.f.ReadAt(s.buf, s.pos)
		if n > 0 {
			c := Chunk{Data: s.buf[:n], Offset: uint64(s.pos), Restarted: s.restarted}
			s.restarted = false
			s.pos += int64(n)
			if serr := s.send(c); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read console log of VM %q: %w", s.name, err)
		}
	}
}

// checkReplaced notices a truncated log (read again from 0) and a log
// replaced by another file (rotation: reopen). A log removed while
// followed is kept open: its last output is still there.
func (s *stream) checkReplaced() (changed bool, err error) {
	cur, err := s.f.Stat()
	if err != nil {
		return false, fmt.Errorf("console log of VM %q: %w", s.name, err)
	}
	if cur.Size() < s.pos {
		s.pos = 0
		s.restarted = true
		return true, nil
	}
	onDisk, err := os.Stat(s.path)
	if err != nil || os.SameFile(onDisk, s.fi) {
		return false, nil
	}
	f, err := os.Open(s.path)
	if err != nil {
		return false, nil // replaced and gone again: check next time
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return false, nil
	}
	s.f.Close()
	s.f, s.fi, s.pos, s.restarted = f, fi, 0, true
	return true, nil
}

func (s *stream) sleep(ctx context.Context) error {
	t := time.NewTimer(s.l.poll())
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
