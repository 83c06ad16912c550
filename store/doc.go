// Package store is xenopsd-ng's persistent state: a Pebble database holding
// opaque records (VMs, tasks, request ids) and a numbered event log.
//
// The store knows nothing about what a record means: package domain encodes
// its records (JSON, see below) and the store keeps them under versioned keys.
// Every state change is one Change: the records it writes or deletes and the
// events it produces. A Change is committed as one atomic, synced Pebble
// batch, so after a crash either all of it is on disk or none of it is, and
// the event log never disagrees with the records. Concurrent commits are
// grouped into one batch and one fsync (group commit); each Change stays
// atomic inside it and revisions follow commit order.
//
// # Key schema (version 2)
//
// All keys are ASCII strings. Integers in keys are fixed-width lower-case hex
// so that byte order equals numeric order. (The "v1/" prefix of the record
// keys names their layout, unchanged since schema version 1.)
//
//	meta/schema            decimal ASCII schema version, e.g. "2". Written when
//	                       the database is created. A binary refuses a database
//	                       whose version is newer than its own, with a message
//	                       naming both versions, and refuses a non-empty
//	                       database with no version.
//	meta/floor             16 hex digits: the highest event revision that has
//	                       been compacted away (absent = 0: nothing compacted).
//	v1/vm/<uuid>           a VM record, JSON as written by package domain
//	                       (domain.vmRecord: the VM with its spec, power
//	                       state, domid, problem, generation, request id, the
//	                       "building" marker set while a domain is being
//	                       built, and the VM's domain claims: for each domain
//	                       the daemon creates, has or is destroying for the VM,
//	                       its domid, role (primary, migration target,
//	                       restore) and state (creating, live, destroying),
//	                       written before the hypercall that changes it).
//	v1/task/<task id>      a task record, JSON (domain.Task).
//	v1/req/<request id>    the VM uuid a CreateVM request id created, as plain
//	                       ASCII (makes CreateVM idempotent across restarts).
//	v1/event/<rev 16 hex>  one event, JSON (domain.Event without its revision:
//	                       the revision is the key). Revisions start at 1 and
//	                       grow by one per event, across restarts.
//
// # Event retention
//
// The log keeps the most recent events within two bounds: a count
// (Options.RetainEvents, default 100000) and a size (Options.RetainEventBytes,
// the sum of the events' values, default 128 MiB), whichever is reached
// first; the newest event is always kept. Once the log is an eighth past
// either bound, the oldest events are deleted after a commit (a range deletion
// plus meta/floor in one batch). The size is not stored: Open sums it from
// the retained events. A reader asking for events after a revision below the
// floor gets ErrCompacted and must resynchronise from a full listing.
//
// # Versioning
//
// SchemaVersion is bumped whenever the meaning of a key or the encoding of a
// value changes incompatibly. Opening an older database runs the migrations
// from its version to SchemaVersion in one batch; opening a newer one fails
// (an older binary must not corrupt a newer database).
//
//	1 -> 2  VM records gained the domain claims. Nothing is rewritten: package
//	        domain reads a record without claims whose VM is running or
//	        paused as claiming, as primary and live, the domain its domid
//	        names. Version-1 binaries, which would not keep claims true, are
//	        refused from then on.
package store
