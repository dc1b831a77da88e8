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
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"
	"golang.org/x/sys/unix"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Helpers of the address pool tests (pools_test.go): nstest's topology
// with IPv6, plus a routed /80 for the proxy and secondary IPv4 addresses,
// and an upstream that tells, for TCP and UDP, the source address and the
// NIC a packet arrived on.
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
	poolNSPrefix = "h14"

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

// newPoolTopology builds the topology above on nstest's (which has the
// links, addresses, default routes and U's strict reverse-path filter)
// and adds the pool's parts; it is removed at the end of the test.
func newPoolTopology(t *testing.T) *topology {
	t.Helper()
	nt := nstest.NewTopology(t, nstest.TopologyConfig{Prefix: poolNSPrefix, Net: 214, V6: "fd14"})
	if nt.ClientV4() != poolClient || nt.ProxyV4() != poolProxy || nt.ServiceV4() != poolSvc4 || nt.ServiceV6() != poolSvc6 {
		t.Fatalf("nstest topology addresses changed: %s %s %s %s", nt.ClientV4(), nt.ProxyV4(), nt.ServiceV4(), nt.ServiceV6())
	}
	var secondaries []string
	for _, a := range poolSecondaries {
		secondaries = append(secondaries, a+"/24")
	}
	if err := nt.P.AddAddr(nt.WAN(2), secondaries...); err != nil {
		t.Fatal(err)
	}
	// The AnyIP setup of a delegated prefix: the host takes every address
	// of it as its own, though no interface holds one.
	nt.P.IP(t, "-6", "route", "add", "local", poolPrefix, "dev", "lo")
	for _, p := range []string{poolPrefix, poolNoRoute} {
		nt.U.IP(t, "-6", "route", "add", p, "via", nt.WANV6(2), "dev", nt.Up(2))
	}
	topo := &topology{C: nt.C.Name, P: nt.P.Name, U: nt.U.Name}
	startPoolServers(t, topo)
	return topo
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

// Users of the pool daemons.
var (
	poolFlow = nstest.User{Name: "flo", Password: "flo-Pw-a81c"}
	poolV4   = nstest.User{Name: "quad", Password: "quad-Pw-3b92"}
	poolAnn  = nstest.User{Name: "ann", Password: "ann-Pw-77d1"}
	poolBen  = nstest.User{Name: "ben", Password: "ben-Pw-0c4e"}
	poolSess = nstest.User{Name: "alice", Password: "alice-Pw-e51f"}
	poolX    = nstest.User{Name: "x-session-y", Password: "xy-Pw-92aa"}
	poolNone = nstest.User{Name: "nolr", Password: "nolr-Pw-4d0b"}
)

// poolConfig renders a daemon configuration listening on poolListen with
// body ([[users]]).
func poolConfig(body string) string {
	return fmt.Sprintf("[server]\nlisten = [%q]\nconnect_timeout = \"5s\"\nshutdown_timeout = \"2s\"\n"+
		"max_handshakes_per_ip = 0\nauth_fail_limit = 0\n\n[log]\nlevel = \"info\"\nformat = \"json\"\n\n[metrics]\nlisten = %q\n%s",
		poolListen, poolMetrics, body)
}

func poolUserBlock(u nstest.User, egress string) string {
	return fmt.Sprintf("\n[[users]]\nname = %q\npassword = %q\n%s\n", u.Name, u.Password, egress)
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
func fetchMany(t *testing.T, ctx context.Context, topo *topology, u nstest.User, target string, n int) []string {
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
				s, err := poolFetch(cctx, topo, u.Name, u.Password, target)
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
		t.Fatalf("%d connections as %s to %s: %v", n, u.Name, target, err)
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
func pythonUDPMany(t *testing.T, topo *topology, u nstest.User, host, port string, rounds int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ph, pp, _ := net.SplitHostPort(poolListen)
	out, stderr, err := nstest.Run(ctx, nil, "ip", "netns", "exec", topo.C, "/usr/bin/python3", "-c", pyUDPManyScript,
		ph, pp, u.Name, u.Password, host, port, fmt.Sprint(rounds))
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
