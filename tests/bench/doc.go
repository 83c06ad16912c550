// Package bench measures the real xenopsd-ng daemon binary on the simulated
// hypervisor: VM create+start+destroy throughput and latency with 0, 1,000
// and 10,000 existing VMs, and the daemon's resident memory at that scale.
//
// Run (not part of go test ./..., which only compiles benchmarks):
//
//	go test ./tests/bench -run '^$' -bench . -benchtime 300x -timeout 60m
//
// Figures reported per sub-benchmark: cycles/s (create+start+destroy cycles
// per second), p50-ms and p99-ms (latency of one cycle), daemon-RSS-MB
// (VmRSS of the daemon process after the cycles, with the existing VMs
// loaded), and daemon-cpu-ms/cycle and simhost-cpu-ms/cycle (the CPU time
// each process used over the cycles, per cycle). clients=16 runs 16
// concurrent gRPC clients. With BENCH_EXISTING_RUNNING=1 the existing VMs are started too, not only
// recorded. With BENCH_PPROF=DIR the daemon runs with --pprof and each run
// of BenchmarkCreateStartDestroy leaves its CPU profile (the run's first
// BENCH_PPROF_SECONDS, default 20) and heap in DIR, and each sim host its
// whole CPU profile (simhost-existingN.cpu.pprof, written when it stops).
//
// BenchmarkScrape runs a daemon with --metrics-listen and 1,000 or 10,000
// running VMs: scrape reports the time, bytes-per-scrape,
// daemon-cpu-ms/scrape, hypercalls/scrape (counted by the sim host) and
// xenstore-requests/scrape of one GET /metrics; lifecycle/scrapes=none and
// lifecycle/scrapes=1s report the cycles' p50/p99 without and with a scrape
// every second, in the same run.
package bench
