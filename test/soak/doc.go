// Package soak holds the soak tests of ifsocks: many tunnels carrying
// verified data through the daemon for a long time, under reloads and
// interface flaps, with the daemon's descriptors, goroutines and memory
// back to their baseline afterwards. Environment variables size them.
//
// By default they run short (CI, about a minute in all, a -race build of
// the daemon). The long versions, for a run by hand:
//
//	IFSOCKS_SOAK=long go test -count=1 -timeout 3h -run '^TestSoak' -v ./test/soak
//
// which is 10,000 tunnels for 10 minutes, 100 reloads, 50 flaps, with a
// normal build of the daemon (the race detector's memory and CPU cost
// would dominate what a long run measures; IFSOCKS_SOAK_RACE=1 keeps it).
// Every size can be set on its own, long or short:
//
//	IFSOCKS_SOAK_TUNNELS   concurrent tunnels (short 200, long 10000)
//	IFSOCKS_SOAK_DURATION  TestSoak's load time (short 15s, long 10m)
//	IFSOCKS_SOAK_RELOADS   TestSoakReload's reloads, half broken (10, 100)
//	IFSOCKS_SOAK_FLAPS     TestSoakFlap's wan2 down/up cycles (5, 50)
//	IFSOCKS_SOAK_INTERVAL  mean pause between exchanges of a tunnel (200ms, 2s)
//	IFSOCKS_SOAK_LIFETIME  mean life of a tunnel before a clean end and a
//	                       new one; 0 keeps each for the whole run (5s, 60s)
//	IFSOCKS_SOAK_CHUNK     largest frame, bytes (16384, 8192)
//	IFSOCKS_SOAK_RACE      1: daemon built with -race (short 1, long 0)
//	IFSOCKS_SOAK_LOGDIR    keep the daemon logs there (default: a temp dir)
//
// The long run is best done with a test binary built without -race too:
// 10,000 tunnels' worth of clients run in the test process.
//
// Descriptors: the daemon holds two per tunnel, so 10,000 tunnels need a
// RLIMIT_NOFILE of 20,100 for it (the test process one per tunnel, the two
// pattern-server processes half each). The test raises the limits where it
// may (CAP_SYS_RESOURCE); where the hard limit is lower and cannot be
// raised it fails at once and says how many tunnels fit (9,950 under a
// hard limit of 20,000: run with IFSOCKS_SOAK_TUNNELS=9900).
//
// The tests live in _test.go files; this file makes the directory a
// package for go build ./... and go vet ./.... Namespaces, topology and
// daemon binary come from internal/nstest.
package soak
