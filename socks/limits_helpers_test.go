package socks

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/metrics"
	"github.com/ifsocks/ifsocks/policy"
	"golang.org/x/crypto/bcrypt"
)

// realisticCost is the bcrypt cost for tests about what bcrypt costs:
// 10, the usual cost, except under the race detector, which makes one
// check at cost 10 take seconds.
func realisticCost() int {
	if raceEnabled {
		return 6
	}
	return 10
}

// costSettings has alice only, with a bcrypt hash of the given cost, and
// real metrics.
func costSettings(tb testing.TB, cost int) *Settings {
	tb.Helper()
	return costSettingsUsers(tb, map[string]int{"alice": cost})
}

// costSettingsUsers has the named users, each with a bcrypt hash of its
// cost and the password alicePass, egressing by "lo", and real metrics.
func costSettingsUsers(tb testing.TB, costs map[string]int) *Settings {
	tb.Helper()
	var accounts []auth.Account
	users := map[string]User{}
	for name, cost := range costs {
		h, err := bcrypt.GenerateFromPassword([]byte(alicePass), cost)
		if err != nil {
			tb.Fatal(err)
		}
		accounts = append(accounts, auth.Account{Name: name, Hash: string(h)})
		users[name] = User{Egress: Egress{Interfaces: []string{"lo"}}}
	}
	store, err := auth.NewStore(accounts, auth.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	return &Settings{
		Auth:             store,
		Users:            users,
		Policy:           policy.New(nil, false),
		Metrics:          metrics.New(),
		HandshakeTimeout: 5 * time.Second,
		ConnectTimeout:   2 * time.Second,
		IdleTimeout:      time.Minute,
	}
}

// dialFrom connects to addr from the loopback address src (any of
// 127.0.0.0/8 works on Linux without configuration), so that a test can
// play several client IPs.
func dialFrom(tb testing.TB, src, addr string) *rawClient {
	tb.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	tb.Cleanup(func() { c.Close() })
	return &rawClient{tb: tb, c: c}
}

// tryLogin sends the greeting and the credentials and returns the RFC 1929
// status and how long the server took to answer the credentials.
func (r *rawClient) tryLogin(user, pass string) (status byte, took time.Duration) {
	r.tb.Helper()
	r.send(5, 1, methodUserPass)
	r.expect(5, methodUserPass)
	msg := append([]byte{1, byte(len(user))}, user...)
	msg = append(append(msg, byte(len(pass))), pass...)
	start := time.Now()
	r.send(msg...)
	var b [2]byte
	if _, err := io.ReadFull(r.c, b[:]); err != nil {
		r.tb.Fatalf("read auth status: %v", err)
	}
	took = time.Since(start)
	if b[0] != 1 {
		r.tb.Fatalf("auth reply version %d", b[0])
	}
	return b[1], took
}

// metricValue scrapes m as Prometheus would and returns the value of the
// series name{labels} (labels as exposed, e.g. `reason="blocked"`; "" for
// none), or 0 if it is not there.
func metricValue(tb testing.TB, m *metrics.Metrics, name, labels string) float64 {
	tb.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	series := name
	if labels != "" {
		series += "{" + labels + "}"
	}
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatalf("metric %s: %v", series, err)
			}
			return f
		}
	}
	return 0
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// percentile is the p-th percentile (0 < p <= 100) by the nearest-rank
// method.
func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (p*len(s)+99)/100 - 1
	return s[max(i, 0)]
}

// raiseNoFile makes sure this process may open n descriptors.
func raiseNoFile(tb testing.TB, n uint64) {
	tb.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	want := syscall.Rlimit{Cur: n, Max: max(n, lim.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		if os.Getuid() != 0 && os.Getenv("CI") == "" {
			tb.Skipf("RLIMIT_NOFILE is %d, need %d: %v", lim.Cur, n, err)
		}
		tb.Fatalf("raise RLIMIT_NOFILE to %d: %v", n, err)
	}
	tb.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) })
}

// blaster is a target that sends size random bytes to every connection
// (then half-closes) while it reads and counts what the client sends.
type blaster struct {
	addr netip.AddrPort
	size int
	got  chan received
}

// received is what a blaster connection read from its client: how much
// and when the client's EOF arrived.
type received struct {
	n  int64
	at time.Time
}

func startBlaster(tb testing.TB, size int) *blaster {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	b := &blaster{addr: ln.Addr().(*net.TCPAddr).AddrPort(), size: size, got: make(chan received, 16)}
	data := make([]byte, size)
	rand.Read(data)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(30 * time.Second))
			var cw sync.WaitGroup
			cw.Go(func() {
				c.Write(data)
				c.(*net.TCPConn).CloseWrite()
			})
			cw.Go(func() {
				n, _ := io.Copy(io.Discard, c)
				b.got <- received{n, time.Now()}
			})
			wg.Go(func() {
				cw.Wait()
				c.Close()
			})
		}
	})
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	return b
}

// transferResult is how long each direction of a transfer took, counted
// from start, when its data phase began.
type transferResult struct {
	start          time.Time
	up, down       time.Duration
	upN, downN     int64
	upErr, downErr error
}

// transfer runs a CONNECT to the blaster as user, sends size bytes while
// receiving the blaster's, and reports when each direction completed.
func (b *blaster) transfer(tb testing.TB, env *testEnv, user, pass string, size int) transferResult {
	tb.Helper()
	r := dialRaw(tb, env.addr)
	r.c.SetDeadline(time.Now().Add(30 * time.Second))
	r.login(user, pass)
	if rep, _ := r.connect(b.addr); rep != RepSucceeded {
		tb.Fatalf("%s: CONNECT reply %#x", user, rep)
	}
	return b.run(r.c, size)
}

// run is transfer's data phase; safe to call from any goroutine.
func (b *blaster) run(c net.Conn, size int) transferResult {
	start := time.Now()
	res := transferResult{start: start}
	var wg sync.WaitGroup
	wg.Go(func() {
		chunk := make([]byte, 64<<10)
		for sent := 0; sent < size; {
			n, err := c.Write(chunk[:min(len(chunk), size-sent)])
			sent += n
			if err != nil {
				res.upErr = err
				return
			}
		}
		c.(*net.TCPConn).CloseWrite()
	})
	res.downN, res.downErr = io.Copy(io.Discard, c)
	res.down = time.Since(start)
	wg.Wait()
	if res.upErr == nil {
		select {
		case got := <-b.got:
			res.upN, res.up = got.n, got.at.Sub(start)
		case <-time.After(30 * time.Second):
		}
	}
	return res
}

// end is when the later of the transfer's two directions completed.
func (r transferResult) end() time.Time {
	return r.start.Add(max(r.up, r.down))
}

// holdChecks takes every server-wide password-check slot of srv, so that
// logins wait (unevictable) until the returned function (also a cleanup)
// gives them back.
func holdChecks(tb testing.TB, srv *Server) (release func()) {
	tb.Helper()
	n := maxChecks()
	if err := srv.lim.checks.Acquire(context.Background(), n); err != nil {
		tb.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { srv.lim.checks.Release(n) }) }
	tb.Cleanup(release)
	return release
}

// heldLogin connects from src and sends a login of user (a name the server
// does not know, so no cached success skips the check) without waiting for
// the answer.
func heldLogin(tb testing.TB, src, addr, user string) *rawClient {
	tb.Helper()
	r := dialFrom(tb, src, addr)
	r.send(5, 1, methodUserPass)
	r.expect(5, methodUserPass)
	msg := append([]byte{1, byte(len(user))}, user...)
	r.send(append(append(msg, 5), "guess"...)...)
	return r
}

// waitProtected waits until client (an IPv4 address) has n handshakes
// counted and none of them evictable.
func waitProtected(tb testing.TB, srv *Server, client string, n int) {
	tb.Helper()
	key := netip.MustParseAddr(client)
	waitFor(tb, 5*time.Second, fmt.Sprintf("%d protected handshakes of %s", n, client), func() bool {
		srv.lim.hsMu.Lock()
		defer srv.lim.hsMu.Unlock()
		g := srv.lim.hs.groups[levelClient][key]
		return g != nil && g.n == n && g.victim() == nil
	})
}
