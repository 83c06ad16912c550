package main

import (
	"context"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// reconnectAttempts bounds how often a stream is reopened in a row without
// receiving anything.
const reconnectAttempts = 30

// reconnect runs session until it ends for good. A session that fails with
// an error retriable accepts (the daemon went away or is restarting) is run
// again after an exponential, jittered delay (100 ms doubling to 2 s), at
// most reconnectAttempts times in a row; a session that received something
// starts the count and the delay afresh. broke says what broke, for the one
// line printed when the stream first breaks.
func (a *app) reconnect(ctx context.Context, session func() (received bool, err error), retriable func(error) bool, broke func(err error) string) error {
	delay := &backoff.ExponentialBackOff{
		InitialInterval:     100 * time.Millisecond,
		RandomizationFactor: backoff.DefaultRandomizationFactor,
		Multiplier:          backoff.DefaultMultiplier,
		MaxInterval:         2 * time.Second,
	}
	delay.Reset()
	failures := 0
	for {
		received, err := session()
		if received {
			failures = 0
			delay.Reset()
		}
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case !retriable(err):
			return err
		}
		failures++
		if failures > reconnectAttempts {
			return fmt.Errorf("gave up reconnecting after %d attempts: %w", reconnectAttempts, err)
		}
		if failures == 1 {
			fmt.Fprintf(a.stderr, "xopsctl: %s\n", broke(err))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay.NextBackOff()):
		}
	}
}
