package socks

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/metrics"
	"go.uber.org/zap/zapcore"
)

// TestSlowloris holds 1,000 connections that never finish their handshake
// — half silent, half sending one byte a second — from ten client IPs,
// and meanwhile times 200 complete requests of a normal client (connect,
// authenticate, CONNECT, echo, close): p99 must stay under 100 ms. Then
// every slow connection must be closed at handshake_timeout, counted from
// its connect, trickle or not.
func TestSlowloris(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 connections for several seconds")
	}
	const (
		slow      = 1000
		ips       = 10
		requests  = 200
		handshake = 5 * time.Second
	)
	raiseNoFile(t, 4*slow+1024)
	st := testSettings(t)
	st.HandshakeTimeout = handshake
	st.Limits.MaxHandshakesPerIP = slow/ips + 10
	env := startServer(t, st)
	echo := echoServer(t)

	type slowConn struct {
		c      net.Conn
		opened time.Time
		closed chan time.Duration // after opened
	}
	conns := make([]*slowConn, 0, slow)
	var readers sync.WaitGroup
	t.Cleanup(readers.Wait) // runs after the connections' own cleanups close them
	for i := range slow {
		r := dialFrom(t, fmt.Sprintf("127.0.0.%d", 10+i%ips), env.addr)
		sc := &slowConn{c: r.c, opened: time.Now(), closed: make(chan time.Duration, 1)}
		conns = append(conns, sc)
		readers.Go(func() {
			io.Copy(io.Discard, sc.c)
			sc.closed <- time.Since(sc.opened)
		})
	}
	// The odd ones send a greeting announcing 255 methods, a byte a
	// second: it would take over four minutes to complete.
	stopTrickle := make(chan struct{})
	var trickler sync.WaitGroup
	trickler.Go(func() {
		greeting := []byte{5, 255}
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := 0; ; i++ {
			b := byte(i)
			if i < len(greeting) {
				b = greeting[i]
			}
			for j := 1; j < len(conns); j += 2 {
				conns[j].c.Write([]byte{b})
			}
			select {
			case <-stopTrickle:
				return
			case <-tick.C:
			}
		}
	})
	defer func() { close(stopTrickle); trickler.Wait() }()
	waitFor(t, 10*time.Second, "all slow connections accepted", func() bool { return env.srv.ActiveConns() >= slow })

	lat := make([]time.Duration, 0, requests)
	begin := time.Now()
	for range requests {
		start := time.Now()
		c, err := net.DialTimeout("tcp", env.addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		r := &rawClient{tb: t, c: c}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		r.login("alice", alicePass)
		if rep, _ := r.connect(echo); rep != RepSucceeded {
			t.Fatalf("CONNECT reply %#x under slowloris", rep)
		}
		r.send('p', 'i', 'n', 'g')
		r.expect('p', 'i', 'n', 'g')
		c.Close()
		lat = append(lat, time.Since(start))
	}
	measured := time.Since(begin)
	held := 0
	for _, sc := range conns {
		if len(sc.closed) == 0 {
			held++
		}
	}
	t.Logf("%d requests in %v with %d slow connections held: p50 %v, p99 %v, max %v",
		requests, measured, held, percentile(lat, 50), percentile(lat, 99), percentile(lat, 100))
	if held != slow {
		t.Errorf("only %d of %d slow connections were held during the measurement", held, slow)
	}
	if p99 := percentile(lat, 99); p99 > 100*time.Millisecond {
		t.Errorf("p99 latency %v under slowloris, want < 100ms", p99)
	}

	// Each slow connection is closed at handshake_timeout. The server's
	// clock starts at accept, a little after the client's connect
	// returned, and 1,000 closes at once queue up: allow for both.
	// The client's clock starts when its connect returns, which on a
	// busy machine can be after the server accepted: allow some of that.
	var first, last [2]time.Duration // silent, trickling
	for i, sc := range conns {
		select {
		case d := <-sc.closed:
			k := i % 2
			if i < 2 || d < first[k] {
				first[k] = d
			}
			last[k] = max(last[k], d)
		case <-time.After(handshake + 5*time.Second):
			t.Fatalf("slow connection %d still open %v after it connected", i, time.Since(sc.opened))
		}
	}
	for k, kind := range []string{"silent", "trickling"} {
		t.Logf("%s connections closed %v to %v after connecting (handshake_timeout %v)", kind, first[k], last[k], handshake)
		if first[k] < handshake-250*time.Millisecond || last[k] > handshake+1500*time.Millisecond {
			t.Errorf("%s connections closed %v to %v after connecting, want about %v", kind, first[k], last[k], handshake)
		}
	}
	waitFor(t, 5*time.Second, "connections gone", func() bool { return env.srv.ActiveConns() == 0 })
}

// TestHandshakesPerIP: a client IP with max_handshakes_per_ip connections
// in their handshake has its next connection closed at once; other IPs
// are not affected; a connection gives its slot back when its request has
// been read (a running flow holds none) and when it closes.
func TestHandshakesPerIP(t *testing.T) {
	const limit = 3
	st := testSettings(t)
	st.HandshakeTimeout = 5 * time.Second
	st.Limits.MaxHandshakesPerIP = limit
	st.Metrics = metrics.New()
	env := startServer(t, st)
	echo := echoServer(t)
	const refusedMetric = "ifsocks_connections_refused_total"

	silent := make([]*rawClient, 0, limit)
	for range limit {
		silent = append(silent, dialFrom(t, "127.0.0.2", env.addr))
	}
	waitFor(t, 2*time.Second, "silent connections accepted", func() bool { return env.srv.ActiveConns() == limit })
	expectRefused(t, "127.0.0.2", env.addr)
	if n := metricValue(t, st.Metrics, refusedMetric, `reason="handshakes_per_ip"`); n != 1 {
		t.Errorf("%s = %v, want 1", refusedMetric, n)
	}

	// 127.0.0.3 has two flows running and fills its slots too: the
	// flows hold none.
	for range 2 {
		r := dialFrom(t, "127.0.0.3", env.addr)
		r.login("alice", alicePass)
		if rep, _ := r.connect(echo); rep != RepSucceeded {
			t.Fatalf("127.0.0.3: CONNECT reply %#x while 127.0.0.2 is at its limit", rep)
		}
	}
	for range limit {
		dialFrom(t, "127.0.0.3", env.addr)
	}
	waitFor(t, 2*time.Second, "127.0.0.3's connections accepted", func() bool { return env.srv.ActiveConns() == 2*limit+2 })
	expectRefused(t, "127.0.0.3", env.addr)

	// When 127.0.0.2's silent connections end, it is served again.
	for _, r := range silent {
		r.c.Close()
	}
	waitFor(t, 2*time.Second, "silent connections gone", func() bool { return env.srv.ActiveConns() == limit+2 })
	r := dialFrom(t, "127.0.0.2", env.addr)
	r.login("alice", alicePass)
	if rep, _ := r.connect(echo); rep != RepSucceeded {
		t.Fatalf("127.0.0.2 after its connections ended: CONNECT reply %#x", rep)
	}

	if n := metricValue(t, st.Metrics, refusedMetric, `reason="handshakes_per_ip"`); n != 2 {
		t.Errorf("%s = %v, want 2", refusedMetric, n)
	}
	lines := env.logs.FilterMessage("connection refused: client has too many connections in handshake").All()
	if len(lines) < 1 || len(lines) > 2 {
		t.Fatalf("%d refusal lines for 2 refusals within a second, want 1 or 2", len(lines))
	}
	if l := lines[0]; l.Level != zapcore.DebugLevel || l.ContextMap()["client"] != "127.0.0.2" {
		t.Errorf("refusal line %v %v, want debug naming 127.0.0.2", l.Level, l.ContextMap())
	}
}

// expectRefused connects from src and expects the connection to be closed
// at once, long before any handshake timeout. A reset is accepted too, even
// one that fails the connect itself.
func expectRefused(tb testing.TB, src, addr string) {
	tb.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	start := time.Now()
	c, err := d.Dial("tcp", addr)
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			tb.Fatalf("connect from %s: %v, want success or a reset", src, err)
		}
		return
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		tb.Fatalf("connection from %s over the limit: read %d bytes, %v; want it closed", src, n, err)
	}
	if el := time.Since(start); el > time.Second {
		tb.Errorf("connection from %s over the limit closed after %v, want at once", src, el)
	}
}
