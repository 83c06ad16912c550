// Package e2e holds the end-to-end tests of xenopsd-ng: they build the real
// xenopsd-ng and xopsctl binaries, start the daemon on the simulated
// hypervisor (its sim host process with the embedded xenstored) on a
// temporary socket and state directory, and drive it with xopsctl and with
// gRPC clients, the way an operator and XAPI would. They cover the VM
// lifecycle, kill -9 crashes and re-adoption, concurrency, bad input,
// resumable event streams, the embedded xenstore seen by xenstore-ls, and
// the metrics listener scraped by Debian's prometheus.
//
// Every daemon, sim host and prometheus a test starts is stopped by that
// test.
package e2e
