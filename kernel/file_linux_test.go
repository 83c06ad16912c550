package kernel

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// loaders are the three ways the builder reads a guest-supplied path.
var loaders = map[string]func(path string) error{
	"OpenFile": func(p string) error {
		_, release, err := OpenFile(context.Background(), p, Limits{}, nil)
		if err == nil {
			release()
		}
		return err
	},
	"LoadFile": func(p string) error { _, err := LoadFile(p, Limits{}); return err },
	"OpenInitrd": func(p string) error {
		r, err := OpenInitrd(p, Limits{})
		if err == nil {
			r.Close()
		}
		return err
	},
}

// TestHostileFileTypes: a FIFO without a writer, a character device and a
// directory are refused at once, with an error naming the type; none is
// opened in a way that waits or read without end.
func TestHostileFileTypes(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{fifo: "named pipe (FIFO)", "/dev/zero": "character device", dir: "directory"}
	for path, kind := range cases {
		for name, load := range loaders {
			done := make(chan error, 1)
			go func() { done <- load(path) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				if path == fifo { // release the blocked open before failing
					if w, werr := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); werr == nil {
						w.Close()
					}
				}
				t.Fatalf("%s(%s) still blocked after 10 s", name, path)
			}
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "is a "+kind+", not a regular file") {
				t.Errorf("%s(%s) = %v, want a malformed error naming a %s", name, path, err, kind)
			}
		}
	}
}

// TestFileChangedWhileRead: the size comes from fstat of the open file and
// no more is read; a file that grew or shrank after it was opened fails.
func TestFileChangedWhileRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "initrd")
	for _, tc := range []struct {
		name   string
		change func(*os.File) error
		want   error
	}{
		{"grown", func(w *os.File) error { _, err := w.Write(make([]byte, 1<<20)); return err }, ErrTooLarge},
		{"shrunk", func(w *os.File) error { return w.Truncate(100) }, nil},
	} {
		if err := os.WriteFile(p, make([]byte, 5000), 0o644); err != nil {
			t.Fatal(err)
		}
		f, size, err := openRegular(p, "initrd", 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		w, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := tc.change(w); err != nil {
			t.Fatal(err)
		}
		w.Close()
		b, err := readExactly(f, size, p, "initrd")
		f.Close()
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: read %d bytes, err %v; want an error (%v)", tc.name, len(b), err, tc.want)
		}
	}
}

// TestSymlinkToRegularFile: links are followed (a /boot/vmlinuz link is
// normal); what counts is the type of the file opened.
func TestSymlinkToRegularFile(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "initrd-6.1")
	if err := os.WriteFile(target, []byte("ramdisk"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "initrd")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	r, err := OpenInitrd(link, Limits{})
	if err != nil || r.Size() != uint64(len("ramdisk")) {
		t.Fatalf("OpenInitrd through a symlink: %v", err)
	}
	r.Close()
	if err := os.Symlink("/dev/zero", filepath.Join(dir, "zero")); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenInitrd(filepath.Join(dir, "zero"), Limits{}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("symlink to /dev/zero: %v", err)
	}
}
