package xenstore

import (
	"context"
	"fmt"
	"syscall"
)

// Op is one node operation of a Batch; build it with WriteOp, MkdirOp,
// RemoveOp or SetPermsOp.
type Op struct {
	t       MsgType
	path    string
	payload []byte
	err     error
}

// WriteOp writes value at path.
func WriteOp(path string, value []byte) Op {
	if err := checkPath(TypeWrite, path); err != nil {
		return Op{t: TypeWrite, path: path, err: err}
	}
	p := make([]byte, 0, len(path)+1+len(value))
	p = append(append(append(p, path...), 0), value...)
	return Op{t: TypeWrite, path: path, payload: p}
}

// MkdirOp creates path if missing.
func MkdirOp(path string) Op { return pathOp(TypeMkdir, path) }

// RemoveOp removes the subtree at path.
func RemoveOp(path string) Op { return pathOp(TypeRm, path) }

// SetPermsOp sets the permissions of path.
func SetPermsOp(path string, perms []Perm) Op {
	if err := checkPath(TypeSetPerms, path); err != nil {
		return Op{t: TypeSetPerms, path: path, err: err}
	}
	if err := validPerms(perms); err != nil {
		return Op{t: TypeSetPerms, path: path, err: &Error{Op: TypeSetPerms, Path: path, Name: "EINVAL", Errno: syscall.EINVAL, Local: err.Error()}}
	}
	ss := []string{path}
	for _, p := range perms {
		ss = append(ss, p.String())
	}
	return Op{t: TypeSetPerms, path: path, payload: JoinStrings(ss...)}
}

func pathOp(t MsgType, path string) Op {
	if err := checkPath(t, path); err != nil {
		return Op{t: t, path: path, err: err}
	}
	return Op{t: t, path: path, payload: JoinStrings(path)}
}

// Batch sends all ops at once (one socket write, all in flight together)
// and waits for every reply: N operations cost about one round trip instead
// of N. The daemon applies them in order. The first failure is returned
// (naming the op's index); the daemon still applies the ops after it, so
// use Tx.Batch when all-or-nothing matters. Ops that fail local checks are
// reported before anything is sent.
func (c *Client) Batch(ctx context.Context, ops ...Op) error { return opsFor(c, 0).batch(ctx, ops) }

// Batch sends ops within the transaction, pipelined (see Client.Batch). On
// error, return it from the Transaction function so the transaction aborts.
func (tx *Tx) Batch(ctx context.Context, ops ...Op) error { return tx.o.batch(ctx, ops) }

func opsFor(c *Client, tx uint32) ops { return ops{c: c, tx: tx} }

func (o ops) batch(ctx context.Context, list []Op) error {
	ops := list
	if len(ops) == 0 {
		return nil
	}
	for i, op := range ops {
		if op.err != nil {
			return fmt.Errorf("batch op %d: %w", i, op.err)
		}
		if op.t == 0 {
			return fmt.Errorf("batch op %d: empty Op (use WriteOp, MkdirOp, RemoveOp, SetPermsOp)", i)
		}
		if len(op.payload) > PayloadMax {
			return fmt.Errorf("batch op %d: %w", i, tooBig(op.t, op.path, len(op.payload)))
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	calls, err := o.c.register(len(ops))
	if err != nil {
		return err
	}
	n := 0
	for _, op := range ops {
		n += HeaderSize + len(op.payload)
	}
	buf := make([]byte, 0, n)
	for i, op := range ops {
		calls[i].t, calls[i].path = op.t, op.path
		buf = AppendMsg(buf, op.t, calls[i].id, o.tx, op.payload)
	}
	if err := o.c.send(buf); err != nil {
		o.c.conn.Close()
		o.c.fail(fmt.Errorf("xenstore: write: %w", err))
		return o.c.terminalErr()
	}
	o.c.sent(len(ops))
	var first error
	for i, cl := range calls {
		if first != nil && ctx.Err() != nil {
			o.c.unregister(calls[i:])
			break
		}
		if _, err := o.c.wait(ctx, cl); err != nil && first == nil {
			first = fmt.Errorf("batch op %d: %w", i, err)
		}
	}
	return first
}
