// Package xenstore is a pure-Go client for the xenstore wire protocol
// (docs/misc/xenstore.txt, io/xs_wire.h) as spoken by Xen 4.17's C xenstored
// and oxenstored, over the daemon's unix socket or /dev/xen/xenbus.
//
// Every message is a 16-byte header (type, req_id, tx_id, len as
// little-endian u32) followed by at most 4096 payload bytes. The Client keeps
// many requests in flight on one connection: each request gets a fresh
// req_id, a reader goroutine matches replies to waiting callers and queues
// WATCH_EVENTs per watch, and concurrent writers are coalesced into one
// socket write. ERROR replies become *Error values that match syscall errnos
// with errors.Is (ENOENT, EAGAIN, EACCES, ...) and ErrQuota for oxenstored's
// EQUOTA. Transaction re-runs a function when the commit reports a conflict.
// Batch (on Client or Tx) sends many writes/mkdirs/removes/set-perms in one
// socket write and waits for all replies: a domain's whole layout costs one
// round trip instead of one per node.
//
// With the C daemon, creating a child changes its parent, so transactions
// that create siblings (e.g. /local/domain/<a> and /local/domain/<b>)
// conflict with each other; create such roots outside the transaction
// (Mkdir) and write below them inside it.
//
// The wire codec (ReadMsg, AppendMsg, SplitStrings, ParsePerm, ...) is
// exported so that the embedded server (package xenstored) shares it.
package xenstore

import "time"

const unwatchTimeout = 5 * time.Second
