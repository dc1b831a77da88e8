// Package nstest is the test harness of ifsocks: network namespaces, veth
// pairs, addresses, `ip`, entering a namespace from Go, a log buffer safe
// for concurrent writers, and builders for users (with bcrypt hashes made
// once per process), configuration text, a client/proxy/upstream topology
// and a running daemon (built once per process, plain or -race; started
// from configuration text, or behind a wrapper with StartCommand), plus
// Prometheus scrapes from inside a namespace. Every package's namespace
// tests use it; none keeps a copy of its own. It is for tests only and is
// not a public API.
//
// Where to find what: ip.go (ip, commands, root check), netns.go
// (namespaces, veths, addresses, listeners and dialers inside one),
// enter_linux.go (entering), topology.go, config.go and users.go (the
// text a daemon reads), daemon.go (binary and process), logbuf.go (its
// log), metrics.go (its /metrics).
//
// A namespace test in ten lines:
//
//	func TestLeavesByWan2(t *testing.T) {
//		topo := nstest.NewTopology(t, nstest.TopologyConfig{Prefix: "ifsx", Net: 240})
//		bob := nstest.User{Name: "bob", Password: "bob-Pw-1", Egress: `interface = "wan2"`}
//		cfg := nstest.Config{Listen: []string{topo.ProxyAddr(1080)}, Users: []nstest.User{bob}}
//		d := nstest.StartDaemon(t, topo.P, cfg.Render(t))
//		d.MustListen(t, topo.C, topo.ProxyAddr(1080))
//		ln := topo.U.Listen(t, "tcp", topo.ServiceAddr(8080))
//		// ... dial through the proxy from topo.C (topo.C.Dialer) with
//		// golang.org/x/net/proxy, accept on ln, check the peer is wan2's.
//	}
//
// What it guarantees:
//
//   - Names: every namespace is PREFIX-PID-N[-ROLE], so parallel test
//     processes never collide, and namespaces a killed process left behind
//     are deleted the next time a process of the same prefix creates one
//     (RemoveStale). Interface names inside a namespace are free to reuse.
//   - Cleanup: everything made with a testing.TB is removed by tb.Cleanup,
//     even when the test fails; processes still inside a namespace are
//     killed with it. The daemon's builds (tens of MB per process) are
//     removed by Main, the TestMain of every package that starts one:
//     func TestMain(m *testing.M) { os.Exit(nstest.Main(m)) }.
//   - Root: RequireRoot skips without root on a developer machine, and
//     fails when CI is set, where a skip would hide a broken runner.
//   - Entering: NS.Do runs a function on an OS thread moved into the
//     namespace (see enter.go for why it is safe). Sockets made there stay
//     in the namespace; goroutines the function starts do not run there.
//   - Time: every command and wait is bounded.
//
// Traffic stays on loopback or inside namespaces the test created: the
// topology's addresses (10.NET.0.0/16, fdNET::/16) are routed nowhere else.
package nstest
