package xenstored_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore/xenstored"
)

func start(t *testing.T, cfg xenstored.Config) (*xenstored.Server, *xenstore.Client) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "xs.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := xenstored.New(cfg)
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	c, err := xenstore.Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		s.Close()
		select {
		case err := <-done:
			if !errors.Is(err, xenstored.ErrServerClosed) {
				t.Errorf("Serve returned %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
	return s, c
}

func tctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// TestReleaseWhileGuestBusy: releasing a domain whose connection is in the
// middle of a stream of requests closes it cleanly.
func TestReleaseWhileGuestBusy(t *testing.T) {
	s, c := start(t, xenstored.Config{})
	if err := c.Mkdir(tctx(t), "/local/domain/4"); err != nil {
		t.Fatal(err)
	}
	if err := c.SetPerms(tctx(t), "/local/domain/4", []xenstore.Perm{{Domid: 4, Access: xenstore.AccessNone}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Introduce(tctx(t), 4, 1, 1); err != nil {
		t.Fatal(err)
	}
	nc, err := s.ConnectDomain(4)
	if err != nil {
		t.Fatal(err)
	}
	g := xenstore.NewClient(nc)
	defer g.Close()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 10000; j++ {
				if err := g.Write(tctx(t), "x", []byte("y")); err != nil {
					return
				}
				if _, err := g.Watch(tctx(t), "x", "t"); err != nil && !errors.Is(err, syscall.EEXIST) {
					return
				}
			}
		}()
	}
	time.Sleep(10 * time.Millisecond) // let the guest get busy (not a timing assertion)
	if err := c.Release(tctx(t), 4); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if _, err := g.Read(tctx(t), "x"); err == nil {
		t.Fatal("released guest can still talk")
	}
	if in, err := c.IsDomainIntroduced(tctx(t), 4); err != nil || in {
		t.Fatalf("introduced after release: %v %v", in, err)
	}
}

// TestDomainExceptionPublic: the sim-style wiring of DomainState and
// DomainException fires @releaseDomain.
func TestDomainExceptionPublic(t *testing.T) {
	var mu sync.Mutex
	alive := map[uint32]bool{9: true}
	s, c := start(t, xenstored.Config{DomainState: func(d uint32) (bool, bool) {
		mu.Lock()
		defer mu.Unlock()
		return alive[d], false
	}})
	w, err := c.Watch(tctx(t), "@releaseDomain", "rel")
	if err != nil {
		t.Fatal(err)
	}
	if ev, ok, err := w.Next(tctx(t)); err != nil || !ok || ev.Path != "@releaseDomain" {
		t.Fatalf("initial event %v %v %v", ev, ok, err)
	}
	if err := c.Introduce(tctx(t), 9, 1, 1); err != nil {
		t.Fatal(err)
	}
	s.DomainException() // nothing changed: no event expected; the write below is the sentinel
	mu.Lock()
	delete(alive, 9)
	mu.Unlock()
	s.DomainException()
	if ev, ok, err := w.Next(tctx(t)); err != nil || !ok || ev.Path != "@releaseDomain" {
		t.Fatalf("no @releaseDomain after the domain vanished: %v %v %v", ev, ok, err)
	}
	if in, err := c.IsDomainIntroduced(tctx(t), 9); err != nil || in {
		t.Fatalf("vanished domain still introduced: %v %v", in, err)
	}
}

func TestConnectDomainRejectsDom0(t *testing.T) {
	s, _ := start(t, xenstored.Config{})
	if _, err := s.ConnectDomain(0); err == nil {
		t.Fatal("ConnectDomain(0) accepted")
	}
	s.Close()
	if _, err := s.ConnectDomain(3); !errors.Is(err, xenstored.ErrServerClosed) {
		t.Fatalf("ConnectDomain after Close: %v", err)
	}
}

func TestCustomQuota(t *testing.T) {
	s, c := start(t, xenstored.Config{Quota: xenstored.Quota{Nodes: 5}})
	if err := c.Mkdir(tctx(t), "/local/domain/6"); err != nil {
		t.Fatal(err)
	}
	if err := c.SetPerms(tctx(t), "/local/domain/6", []xenstore.Perm{{Domid: 6, Access: xenstore.AccessNone}}); err != nil {
		t.Fatal(err)
	}
	nc, err := s.ConnectDomain(6)
	if err != nil {
		t.Fatal(err)
	}
	g := xenstore.NewClient(nc)
	defer g.Close()
	n := 0
	for ; n < 10; n++ {
		if err := g.Write(tctx(t), "n"+string(rune('a'+n)), nil); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("quota error %v", err)
			}
			break
		}
	}
	// The home node itself counts: 1 + 4 created.
	if n != 4 {
		t.Fatalf("created %d nodes under a 5-node quota (home included)", n)
	}
}
