//go:build linux

package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"
	"golang.org/x/sys/unix"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Helpers of the address pool tests (pools_test.go): a topology with IPv6,
// a routed /80 for the proxy, secondary IPv4 addresses, and an upstream
// that tells, for TCP and UDP, the source address and the NIC a packet
// arrived on.
//
//	C (client)              P (proxy, the daemon)            U (upstream)
//	c0 10.214.0.2 -------- cl0 10.214.0.1
//	                       wan1 10.214.1.1, fd14:1::1 ------ up1 10.214.1.2, fd14:1::2
//	                       wan2 10.214.2.1, fd14:2::1 ------ up2 10.214.2.2, fd14:2::2
//	                            10.214.2.11-14 (secondary)
//	                       lo: local route fd14:80::/80      lo 10.214.9.9, fd14:9::9
//
// P's default routes prefer wan1 (metric 100, wan2 200), so a pool whose
// flows arrive on up2 proves SO_BINDTODEVICE. U routes fd14:80::/80 (the
// pool, "delegated" to wan2 as AWS delegates a prefix to an ENI) and
// fd14:81::/80 (a pool P has no local route for) to P via up2. U's servers
// have one socket per NIC (SO_BINDTODEVICE); each answers "SRC DEV".
const (
	poolNSPrefix = "h14-"

	poolClient   = "10.214.0.2"
	poolProxy    = "10.214.0.1"
	poolListen   = poolProxy + ":1080"
	poolPrefix   = "fd14:80::/80" // routed to P, local route on P
	poolNoRoute  = "fd14:81::/80" // routed to P, no local route
	poolSvc4     = "10.214.9.9"
	poolSvc6     = "fd14:9::9"
	poolWebPort  = "8080"
	poolUDPPort  = "9000"
	poolMetrics  = "127.0.0.1:9814"
	poolArriveOn = "up2" // the NIC of U that wan2 is wired to
)

// poolSecondaries are wan2's secondary IPv4 addresses.
var poolSecondaries = []string{"10.214.2.11", "10.214.2.12", "10.214.2.13", "10.214.2.14"}

var poolStaleOnce sync.Once

// newPoolTopology builds the topology above for one test and removes it at
// the end of the test.
func newPoolTopology(t *testing.T) *topology {
	t.Helper()
	nstest.RequireRoot(t)
	poolStaleOnce.Do(func() { removeStalePrefix(poolNSPrefix) })
	base := fmt.Sprintf("%s%d-%d-", poolNSPrefix, os.Getpid(), egSeq.Add(1))
	topo := &topology{C: base + "c", P: base + "p", U: base + "u"}
	t.Cleanup(func() {
		if err := topo.destroy(); err != nil {
			t.Errorf("pool topology teardown: %v", err)
		}
	})
	if err := buildPoolTopology(topo); err != nil {
		t.Fatalf("pool topology: %v", err)
	}
	startPoolServers(t, topo)
	return topo
}

func buildPoolTopology(topo *topology) error {
	C, P, U := topo.C, topo.P, topo.U
	for _, ns := range []string{C, P, U} {
		if _, err := nstest.IPErr("netns", "add", ns); err != nil {
			return err
		}
		topo.created = append(topo.created, ns)
		// Before the links exist, so they inherit it: no DAD (addresses
		// usable at once), no router advertisements, no forwarding.
		if err := nstest.Sysctl(ns, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
			"net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.default.accept_ra=0",
			"net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"); err != nil {
			return err
		}
	}
	steps := [][]string{
		{"-n", C, "link", "add", "c0", "type", "veth", "peer", "name", "cl0", "netns", P},
		{"-n", P, "link", "add", "wan1", "type", "veth", "peer", "name", "up1", "netns", U},
		{"-n", P, "link", "add", "wan2", "type", "veth", "peer", "name", "up2", "netns", U},
		{"-n", C, "addr", "add", poolClient + "/24", "dev", "c0"},
		{"-n", P, "addr", "add", poolProxy + "/24", "dev", "cl0"},
		{"-n", P, "addr", "add", "10.214.1.1/24", "dev", "wan1"},
		{"-n", P, "addr", "add", "fd14:1::1/64", "dev", "wan1", "nodad"},
		{"-n", P, "addr", "add", "10.214.2.1/24", "dev", "wan2"},
		{"-n", P, "addr", "add", "fd14:2::1/64", "dev", "wan2", "nodad"},
		{"-n", U, "addr", "add", "10.214.1.2/24", "dev", "up1"},
		{"-n", U, "addr", "add", "fd14:1::2/64", "dev", "up1", "nodad"},
		{"-n", U, "addr", "add", "10.214.2.2/24", "dev", "up2"},
		{"-n", U, "addr", "add", "fd14:2::2/64", "dev", "up2", "nodad"},
		{"-n", U, "addr", "add", poolSvc4 + "/32", "dev", "lo"},
		{"-n", U, "addr", "add", poolSvc6 + "/128", "dev", "lo"},
	}
	for _, a := range poolSecondaries {
		steps = append(steps, []string{"-n", P, "addr", "add", a + "/24", "dev", "wan2"})
	}
	for ns, links := range map[string][]string{C: {"lo", "c0"}, P: {"lo", "cl0", "wan1", "wan2"}, U: {"lo", "up1", "up2"}} {
		for _, l := range links {
			steps = append(steps, []string{"-n", ns, "link", "set", l, "up"})
		}
	}
	steps = append(steps,
		[]string{"-n", P, "route", "add", "default", "via", "10.214.1.2", "dev", "wan1", "metric", "100"},
		[]string{"-n", P, "route", "add", "default", "via", "10.214.2.2", "dev", "wan2", "metric", "200"},
		[]string{"-n", P, "-6", "route", "add", "default", "via", "fd14:1::2", "dev", "wan1", "metric", "100"},
		[]string{"-n", P, "-6", "route", "add", "default", "via", "fd14:2::2", "dev", "wan2", "metric", "200"},
		// The AnyIP setup of a delegated prefix: the host takes every
		// address of it as its own, though no interface holds one.
		[]string{"-n", P, "-6", "route", "add", "local", poolPrefix, "dev", "lo"},
		[]string{"-n", U, "-6", "route", "add", poolPrefix, "via", "fd14:2::1", "dev", "up2"},
		[]string{"-n", U, "-6", "route", "add", poolNoRoute, "via", "fd14:2::1", "dev", "up2"})
	for _, s := range steps {
		if _, err := nstest.IPErr(s...); err != nil {
			return err
		}
	}
	// Strict reverse-path filtering in U: an IPv4 packet from wan2's
	// addresses arriving on up1 is dropped.
	return nstest.Sysctl(U, "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.up1.rp_filter=1", "net.ipv4.conf.up2.rp_filter=1")
}

// startPoolServers runs, in U, an HTTP server on port 8080 (all
// addresses) and a UDP server on [fd14:9::9]:9000, with one socket per
// NIC; both answer "SRC DEV" (the UDP one "SRC DEV|payload").
func startPoolServers(t *testing.T, topo *topology) {
	t.Helper()
	for _, dev := range []string{"up1", "up2"} {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), dev) }); err != nil {
				return err
			}
			return serr
		}}
		var (
			l  net.Listener
			pc net.PacketConn
		)
		// The UDP socket is bound to the service address, so that its
		// replies come from it (a wildcard socket would answer from
		// up2's own address, which the association's reply filter drops).
		err := nstest.Enter(topo.U, func() error {
			var err error
			if l, err = lc.Listen(context.Background(), "tcp", "[::]:"+poolWebPort); err != nil {
				return err
			}
			pc, err = lc.ListenPacket(context.Background(), "udp6", net.JoinHostPort(poolSvc6, poolUDPPort))
			return err
		})
		if err != nil {
			t.Fatalf("servers on %s: %v", dev, err)
		}
		srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ap, _ := netip.ParseAddrPort(r.RemoteAddr)
			fmt.Fprintf(w, "%s %s\n", ap.Addr().Unmap(), dev)
		})}
		var wg sync.WaitGroup
		wg.Go(func() { _ = srv.Serve(l) })
		wg.Go(func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				ap := from.(*net.UDPAddr).AddrPort()
				_, _ = pc.WriteTo(fmt.Appendf(nil, "%s %s|%s", ap.Addr().Unmap(), dev, buf[:n]), from)
			}
		})
		t.Cleanup(func() { _ = srv.Close(); pc.Close(); wg.Wait() })
	}
}

// poolUser is a user of the pool daemons.
type poolUser struct{ name, pass string }

var (
	poolFlow = poolUser{"flo", "flo-Pw-a81c"}
	poolV4   = poolUser{"quad", "quad-Pw-3b92"}
	poolAnn  = poolUser{"ann", "ann-Pw-77d1"}
	poolBen  = poolUser{"ben", "ben-Pw-0c4e"}
	poolSess = poolUser{"alice", "alice-Pw-e51f"}
	poolX    = poolUser{"x-session-y", "xy-Pw-92aa"}
	poolNone = poolUser{"nolr", "nolr-Pw-4d0b"}
)

// poolConfig renders a daemon configuration listening on poolListen with
// body ([[users]]).
func poolConfig(body string) string {
	return fmt.Sprintf("[server]\nlisten = [%q]\nconnect_timeout = \"5s\"\nshutdown_timeout = \"2s\"\n"+
		"max_handshakes_per_ip = 0\nauth_fail_limit = 0\n\n[log]\nlevel = \"info\"\nformat = \"json\"\n\n[metrics]\nlisten = %q\n%s",
		poolListen, poolMetrics, body)
}

func poolUserBlock(u poolUser, egress string) string {
	return fmt.Sprintf("\n[[users]]\nname = %q\npassword = %q\n%s\n", u.name, u.pass, egress)
}

// startPoolDaemon runs ifsocks in topo's P with cfg until the end of the
// test.
func startPoolDaemon(t *testing.T, topo *topology, cfg string) *opsDaemon {
	t.Helper()
	od := spawnDaemon(t, topo, "pool", cfg, nil, func(od *opsDaemon) {})
	if err := od.waitListening([]string{poolListen}, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return od
}

// poolFetch asks U's whoami at target through the proxy as name/pass with
// golang.org/x/net/proxy, from C, and returns what U saw ("SRC DEV").
func poolFetch(ctx context.Context, topo *topology, name, pass, target string) (string, error) {
	d, err := proxy.SOCKS5("tcp", poolListen, &proxy.Auth{User: name, Password: pass}, nstest.Dialer{NS: topo.C, Timeout: 5 * time.Second})
	if err != nil {
		return "", err
	}
	c, err := d.(proxy.ContextDialer).DialContext(ctx, "tcp", target)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	host, _, _ := net.SplitHostPort(target)
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", host); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("whoami: status %d, %v", resp.StatusCode, err)
	}
	return strings.TrimSpace(string(body)), nil
}

// seenAddr splits "SRC DEV".
func seenAddr(tb testing.TB, seen string) (netip.Addr, string) {
	tb.Helper()
	a, dev, ok := strings.Cut(seen, " ")
	ip, err := netip.ParseAddr(a)
	if !ok || err != nil {
		tb.Fatalf("upstream answered %q", seen)
	}
	return ip, dev
}

// fetchMany makes n connections as u to target with a few workers and
// returns what the upstream saw for each; it fails the test on the first
// error or when ctx ends.
func fetchMany(t *testing.T, ctx context.Context, topo *topology, u poolUser, target string, n int) []string {
	t.Helper()
	const workers = 8
	out := make([]string, n)
	next := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				s, err := poolFetch(cctx, topo, u.name, u.pass, target)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				out[i] = s
			}
		})
	}
	var err error
feed:
	for i := range n {
		select {
		case next <- i:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	if err != nil {
		t.Fatalf("%d connections as %s to %s: %v", n, u.name, target, err)
	}
	return out
}

// pyUDPManyScript opens one PySocks UDP socket (one association) per
// round, sends to the target, prints the reply's payload and closes it.
const pyUDPManyScript = `
import socket, socks, sys
proxy_host, proxy_port, user, pw, host, port, rounds = sys.argv[1:8]
for i in range(int(rounds)):
    s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    s.set_proxy(socks.SOCKS5, proxy_host, int(proxy_port), username=user, password=pw)
    s.settimeout(2)
    payload = "r%d" % i
    for attempt in range(3):
        s.sendto(payload.encode(), (host, int(port)))
        try:
            data, _ = s.recvfrom(2048)
        except socket.timeout:
            continue
        break
    else:
        sys.exit("no reply in round %d" % i)
    s.close()
    print(data.decode())
`

// pythonUDPMany runs pyUDPManyScript from C: rounds associations as u.
func pythonUDPMany(t *testing.T, topo *topology, u poolUser, host, port string, rounds int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ph, pp, _ := net.SplitHostPort(poolListen)
	out, stderr, err := nstest.Run(ctx, nil, "ip", "netns", "exec", topo.C, "/usr/bin/python3", "-c", pyUDPManyScript,
		ph, pp, u.name, u.pass, host, port, fmt.Sprint(rounds))
	if err != nil {
		t.Fatalf("python UDP: %v\n%s", err, stderr)
	}
	return strings.Split(strings.TrimSpace(out), "\n")
}

// flowLines returns the daemon's flow lines of user.
func poolFlows(od *opsDaemon, user string) []map[string]any {
	var out []map[string]any
	for _, m := range od.entriesSince(0) {
		if m["msg"] == "flow" && m["user"] == user {
			out = append(out, m)
		}
	}
	return out
}

// jsonLine is for messages.
func jsonLine(m map[string]any) string {
	b, _ := json.Marshal(m)
	return string(b)
}
