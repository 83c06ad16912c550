package devices

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// stateGone stands, inside this package, for a state node that does not
// exist (the directory was removed).
const stateGone State = -1

var stateNames = [...]string{"Unknown", "Initialising", "InitWait", "Initialised", "Connected", "Closing", "Closed", "Reconfiguring", "Reconfigured"}

// String returns the XenbusState's name, as in io/xenbus.h.
func (s State) String() string {
	if s == stateGone {
		return "gone"
	}
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// maxDrain bounds how many queued events one wake-up swallows before the
// states are read again: a guest flooding its directory with writes costs
// a bounded amount of work per read, and the wait's deadline still holds.
const maxDrain = 1024

// stateWatch watches a device's state nodes (one or two watches).
type stateWatch struct{ ws []*xenstore.Watch }

func (p *Plugger) watchStates(ctx context.Context, paths ...string) (*stateWatch, error) {
	sw := &stateWatch{}
	for _, path := range paths {
		token := "devices-" + strconv.FormatUint(p.tokens.Add(1), 10)
		w, err := p.xs.Watch(ctx, path, token)
		if err != nil {
			sw.close()
			return nil, fmt.Errorf("watching %s: %w", path, err)
		}
		sw.ws = append(sw.ws, w)
	}
	return sw, nil
}

func (sw *stateWatch) close() {
	for _, w := range sw.ws {
		w.Close()
	}
}

// next waits for an event on any of the watches, then swallows what is
// already queued (at most maxDrain events).
func (sw *stateWatch) next(ctx context.Context) error {
	var a, b <-chan xenstore.WatchEvent
	a = sw.ws[0].Events()
	if len(sw.ws) > 1 {
		b = sw.ws[1].Events()
	}
	var ok bool
	select {
	case <-ctx.Done():
		return ctx.Err()
	case _, ok = <-a:
	case _, ok = <-b:
	}
	for i := 0; ok && i < maxDrain; i++ {
		select {
		case _, ok = <-a:
		case _, ok = <-b:
		default:
			return nil
		}
	}
	if !ok {
		return errors.New("xenstore watch closed (connection lost)")
	}
	return nil
}

// waitCond decides, from the states read after an event, whether the wait
// is over; an error ends it.
type waitCond func(be, fe State) (done bool, err error)

// wait re-reads rec's states on every watch event until cond is satisfied,
// cond or a read fails, ctx ends or bound passes. withFrontend reads and
// validates the frontend too (else fe is StateUnknown and not reported). A wait that runs
// out of time wraps context.DeadlineExceeded and says what it waited for
// and where both ends were.
func (p *Plugger) wait(ctx context.Context, rec Record, bound time.Duration, what string, withFrontend bool, cond waitCond) error {
	wctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	// The backend's state node only (the backend writes many others); the
	// whole frontend directory, so that a guest that repoints its backend
	// node is caught at once.
	paths := []string{rec.BackendPath() + "/state"}
	if withFrontend {
		paths = append(paths, rec.FrontendPath())
	}
	sw, err := p.watchStates(wctx, paths...)
	if err != nil {
		return err
	}
	defer sw.close()
	be, fe := StateUnknown, StateUnknown
	for {
		var err error
		be, fe, err = p.states(wctx, rec, withFrontend)
		if err == nil {
			var done bool
			if done, err = cond(be, fe); done {
				return nil
			}
		}
		if err != nil && wctx.Err() == nil {
			return err
		}
		if err := sw.next(wctx); err != nil {
			switch {
			case ctx.Err() != nil:
				return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
			case wctx.Err() != nil:
				where := fmt.Sprintf("backend %v", be)
				if withFrontend {
					where += fmt.Sprintf(", frontend %v", fe)
				}
				return fmt.Errorf("%s did not happen within %v (%s): %w", what, bound, where, context.DeadlineExceeded)
			}
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
	}
}

// states reads the frontend (validated) and then the backend's state. In
// that order, a frontend that says it talked to the backend must find the
// backend at least in InitWait: the backend never goes back below it.
func (p *Plugger) states(ctx context.Context, rec Record, withFrontend bool) (be, fe State, err error) {
	if withFrontend {
		f, err := p.readFrontend(ctx, rec, false)
		if err != nil {
			return StateUnknown, StateUnknown, err
		}
		fe = f.State
	}
	if be, err = p.backendState(ctx, rec); err != nil {
		return StateUnknown, fe, err
	}
	if withFrontend {
		err = checkOrder(be, fe)
	}
	return be, fe, err
}

func (p *Plugger) backendState(ctx context.Context, rec Record) (State, error) {
	v, ok, err := p.readNode(ctx, rec.BackendPath()+"/state")
	if err != nil || !ok {
		return stateGone, err
	}
	s, err := parseState(v)
	if err != nil {
		return stateGone, fmt.Errorf("backend %w", err)
	}
	return s, nil
}

// checkOrder fails a frontend whose state cannot follow the backend's: it
// initialised or connected before the backend reached InitWait (frontends
// wait for InitWait before they publish their rings), or it uses the
// Reconfiguring states, which disk and network frontends never do.
func checkOrder(be, fe State) error {
	if fe >= StateReconfiguring {
		return badFrontend("its state is %v, which vbd and vif frontends never use", fe)
	}
	if (fe == StateInitialised || fe == StateConnected) && be >= 0 && be < StateInitWait {
		return badFrontend("its state is %v while the backend is still %v (out of order)", fe, be)
	}
	return nil
}

// backendError returns what the kernel's backend reported with
// xenbus_dev_error, or "" if nothing.
func (p *Plugger) backendError(ctx context.Context, rec Record) string {
	v, ok, err := p.readNode(ctx, backendErrorPath(rec)+"/error")
	if err != nil || !ok {
		return ""
	}
	return v
}
