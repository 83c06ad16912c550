package xenstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"syscall"
	"time"
)

// MaxTransactionAttempts bounds how often Transaction runs the caller's
// function when commits keep failing with EAGAIN.
const MaxTransactionAttempts = 32

// Tx is an open transaction. Its operations see the transaction's own
// writes; nothing is visible to others until Commit.
type Tx struct {
	o    ops
	done bool
}

// ID returns the daemon's transaction id.
func (tx *Tx) ID() uint32 { return tx.o.tx }

// Begin starts a transaction (TRANSACTION_START). Prefer Transaction, which
// retries on conflicts.
func (c *Client) Begin(ctx context.Context) (*Tx, error) {
	p, err := c.request(ctx, TypeTransactionStart, 0, "", []byte{0})
	if err != nil {
		return nil, err
	}
	s := string(p)
	if n := len(s); n > 0 && s[n-1] == 0 {
		s = s[:n-1]
	}
	id, err := strconv.ParseUint(s, 10, 32)
	if err != nil || id == 0 {
		return nil, fmt.Errorf("xenstore TRANSACTION_START: bad transaction id %q", s)
	}
	return &Tx{o: ops{c: c, tx: uint32(id)}}, nil
}

func (tx *Tx) end(ctx context.Context, commit bool) error {
	if tx.done {
		return fmt.Errorf("xenstore: transaction %d already ended", tx.o.tx)
	}
	tx.done = true
	arg := "F"
	if commit {
		arg = "T"
	}
	_, err := tx.o.c.request(ctx, TypeTransactionEnd, tx.o.tx, "", JoinStrings(arg))
	return err
}

// Commit ends the transaction, applying its changes. An error matching
// syscall.EAGAIN means a conflicting change happened; redo all of it.
func (tx *Tx) Commit(ctx context.Context) error { return tx.end(ctx, true) }

// Abort ends the transaction discarding its changes.
func (tx *Tx) Abort(ctx context.Context) error { return tx.end(ctx, false) }

// Read returns a node's value as seen in the transaction.
func (tx *Tx) Read(ctx context.Context, path string) ([]byte, error) { return tx.o.read(ctx, path) }

// Write sets a node's value within the transaction.
func (tx *Tx) Write(ctx context.Context, path string, value []byte) error {
	return tx.o.write(ctx, path, value)
}

// Mkdir creates a node within the transaction.
func (tx *Tx) Mkdir(ctx context.Context, path string) error { return tx.o.mkdir(ctx, path) }

// Remove deletes a subtree within the transaction.
func (tx *Tx) Remove(ctx context.Context, path string) error { return tx.o.remove(ctx, path) }

// List returns a node's children as seen in the transaction.
func (tx *Tx) List(ctx context.Context, path string) ([]string, error) { return tx.o.list(ctx, path) }

// GetPerms returns a node's permissions within the transaction.
func (tx *Tx) GetPerms(ctx context.Context, path string) ([]Perm, error) {
	return tx.o.getPerms(ctx, path)
}

// SetPerms sets a node's permissions within the transaction.
func (tx *Tx) SetPerms(ctx context.Context, path string, perms []Perm) error {
	return tx.o.setPerms(ctx, path, perms)
}

// Transaction runs fn in a transaction and commits it. When the commit (or an
// operation inside fn) fails with EAGAIN, the whole transaction is re-run, at
// most MaxTransactionAttempts times. If fn returns another error the
// transaction is aborted and that error returned.
func (c *Client) Transaction(ctx context.Context, fn func(tx *Tx) error) error {
	var last error
	for attempt := 0; attempt < MaxTransactionAttempts; attempt++ {
		if attempt > 0 {
			// Randomised ("full jitter") exponential back-off, 1 ms
			// doubling to 256 ms, so that competing writers spread out
			// even when a transaction takes milliseconds (oxenstored under
			// nested Xen: with a 26 ms cap, 6 writers incrementing one
			// counter still exhausted 16 attempts; 32 attempts of the 256 ms
			// cap bound the wait to about 7 s).
			ceil := time.Millisecond << min(attempt-1, 8)
			d := time.Duration(rand.Int64N(int64(ceil))) + 50*time.Microsecond
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		if err := fn(tx); err != nil {
			if !tx.done {
				// Abort even if ctx has ended, so the daemon does not keep
				// the transaction (and its quota slot) until we disconnect.
				actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unwatchTimeout)
				_ = tx.Abort(actx)
				cancel()
			}
			if errors.Is(err, syscall.EAGAIN) {
				last = err
				continue
			}
			return err
		}
		if tx.done {
			return nil // fn ended it itself
		}
		err = tx.Commit(ctx)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EAGAIN) {
			return err
		}
		last = err
	}
	return fmt.Errorf("xenstore: transaction still conflicting after %d attempts: %w", MaxTransactionAttempts, last)
}
