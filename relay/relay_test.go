package relay_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/relay"
	"go.uber.org/goleak"
	"golang.org/x/time/rate"
)

// spliceHelperEnv makes the test binary run spliceHelper (under strace)
// instead of the tests.
const spliceHelperEnv = "IFSOCKS_RELAY_SPLICE_HELPER"

// spliceRateEnv, when not empty, paces the helper's relay to that many
// bytes per second (burst 1 MiB).
const spliceRateEnv = "IFSOCKS_RELAY_SPLICE_RATE"

func TestMain(m *testing.M) {
	if os.Getenv(spliceHelperEnv) != "" {
		os.Exit(spliceHelper())
	}
	goleak.VerifyTestMain(m)
}

// tcpPair returns the two ends of a loopback TCP connection; both are
// closed at cleanup.
func tcpPair(tb testing.TB) (dialed, accepted *net.TCPConn) {
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	d, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		tb.Fatal(err)
	}
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	a, err := ln.AcceptTCP()
	if err != nil {
		d.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		d.Close()
		a.Close()
	})
	return d, a
}

// flow is a relay under test: the client application and the upstream
// server are the test's ends; the relay copies between its own two ends.
type flow struct {
	client   *net.TCPConn // the client application's socket
	upstream *net.TCPConn // the upstream server's socket
	done     chan relay.Result
	start    time.Time
}

// startRelay runs relay.Start; the test waits for its result at cleanup.
func startRelay(tb testing.TB, idle time.Duration) *flow {
	tb.Helper()
	client, proxyClient := tcpPair(tb)
	proxyUp, upstream := tcpPair(tb)
	f := &flow{client: client, upstream: upstream, done: make(chan relay.Result, 1), start: time.Now()}
	relay.Start(proxyClient, proxyUp, idle, relay.Counts{}, func(r relay.Result) { f.done <- r })
	tb.Cleanup(func() {
		// Unblock a relay a failed test left running, then wait for it.
		client.SetLinger(0)
		client.Close()
		upstream.SetLinger(0)
		upstream.Close()
		select {
		case <-f.done:
		case <-time.After(5 * time.Second):
			tb.Error("relay did not return after both ends were closed")
		}
	})
	return f
}

// wait returns the relay's result, failing after limit.
func (f *flow) wait(tb testing.TB, limit time.Duration) relay.Result {
	tb.Helper()
	select {
	case r := <-f.done:
		f.done <- r // for cleanup
		return r
	case <-time.After(limit):
		tb.Fatalf("relay still running after %v", limit)
		return relay.Result{}
	}
}

// running reports whether the relay is still running.
func (f *flow) running() bool {
	select {
	case r := <-f.done:
		f.done <- r
		return false
	default:
		return true
	}
}

func randomBytes(tb testing.TB, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

// sendAndClose writes data then half-closes; the error goes to errc.
func sendAndClose(c *net.TCPConn, data []byte, errc chan<- error) {
	_, err := c.Write(data)
	if err == nil {
		err = c.CloseWrite()
	}
	errc <- err
}

func TestBothDirections(t *testing.T) {
	const size = 1 << 20
	f := startRelay(t, 0)
	up, down := randomBytes(t, size), randomBytes(t, size)
	for _, c := range []*net.TCPConn{f.client, f.upstream} {
		c.SetDeadline(time.Now().Add(20 * time.Second))
	}
	errc := make(chan error, 2)
	go sendAndClose(f.client, up, errc)
	go sendAndClose(f.upstream, down, errc)
	gotUp, errUp := io.ReadAll(f.upstream)
	gotDown, errDown := io.ReadAll(f.client)
	for range 2 {
		if err := <-errc; err != nil {
			t.Errorf("write: %v", err)
		}
	}
	if errUp != nil || !bytes.Equal(gotUp, up) {
		t.Errorf("upstream received %d bytes (err %v), want the %d sent, identical", len(gotUp), errUp, size)
	}
	if errDown != nil || !bytes.Equal(gotDown, down) {
		t.Errorf("client received %d bytes (err %v), want the %d sent, identical", len(gotDown), errDown, size)
	}
	r := f.wait(t, 10*time.Second)
	want := relay.Result{Up: size, Down: size}
	if r != want {
		t.Errorf("Result = %+v, want %+v", r, want)
	}
}

// TestBurstSizes sends bursts of different sizes in lockstep (each is
// echoed back before the next is sent), so that the copy loop meets each
// on its own: small ones go through its buffer, bulk ones through splice,
// and the switches between the two must neither lose, reorder nor hold back
// a byte, in either direction.
func TestBurstSizes(t *testing.T) {
	for _, tt := range []struct {
		name  string
		sizes []int
	}{
		{"small only", []int{1, 64, 1500, 16<<10 - 1}},
		{"exactly the buffer", []int{16 << 10, 16 << 10, 1}},
		{"small then bulk then small", []int{10, 3 << 20, 100, 2, 1 << 20, 7}},
		{"bulk back to back", []int{4 << 20, 64 << 10, 2 << 20}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := startRelay(t, 0)
			for _, c := range []*net.TCPConn{f.client, f.upstream} {
				c.SetDeadline(time.Now().Add(20 * time.Second))
			}
			var up, down int64
			for i, size := range tt.sizes {
				msg := randomBytes(t, size)
				// Client to upstream, then the same bytes back.
				for _, dir := range []struct {
					from, to *net.TCPConn
					count    *int64
				}{{f.client, f.upstream, &up}, {f.upstream, f.client, &down}} {
					errc := make(chan error, 1)
					go func() { _, err := dir.from.Write(msg); errc <- err }()
					got := make([]byte, size)
					_, rerr := io.ReadFull(dir.to, got)
					if err := <-errc; err != nil {
						t.Fatalf("burst %d (%d bytes): write: %v", i, size, err)
					}
					if rerr != nil || !bytes.Equal(got, msg) {
						t.Fatalf("burst %d (%d bytes): read %v, identical %v", i, size, rerr, bytes.Equal(got, msg))
					}
					*dir.count += int64(size)
				}
			}
			f.client.CloseWrite()
			f.upstream.CloseWrite()
			r := f.wait(t, 10*time.Second)
			if want := (relay.Result{Up: up, Down: down}); r != want {
				t.Errorf("Result = %+v, want %+v", r, want)
			}
		})
	}
}

func TestHalfClose(t *testing.T) {
	f := startRelay(t, 0)
	for _, c := range []*net.TCPConn{f.client, f.upstream} {
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	if _, err := f.client.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := f.client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The upstream sees the request and then EOF ...
	got, err := io.ReadAll(f.upstream)
	if err != nil || string(got) != "request" {
		t.Fatalf("upstream read %q, %v; want \"request\" then EOF", got, err)
	}
	// ... while its direction still flows, in several writes after the EOF.
	for _, s := range []string{"resp", "onse"} {
		if _, err := f.upstream.Write([]byte(s)); err != nil {
			t.Fatalf("upstream write after client's half-close: %v", err)
		}
		buf := make([]byte, len(s))
		if _, err := io.ReadFull(f.client, buf); err != nil || string(buf) != s {
			t.Fatalf("client read %q, %v; want %q", buf, err, s)
		}
	}
	if !f.running() {
		t.Fatal("relay ended after one direction closed")
	}
	if err := f.upstream.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(f.client); err != nil || len(rest) != 0 {
		t.Errorf("client read %q, %v after upstream's half-close; want EOF", rest, err)
	}
	r := f.wait(t, 5*time.Second)
	want := relay.Result{Up: int64(len("request")), Down: int64(len("response"))}
	if r != want {
		t.Errorf("Result = %+v, want %+v", r, want)
	}
}

func TestReset(t *testing.T) {
	tests := []struct {
		name  string
		reset func(*flow) *net.TCPConn // resets one end, returns the other
	}{
		{"client resets", func(f *flow) *net.TCPConn { return resetConn(f.client, f.upstream) }},
		{"upstream resets", func(f *flow) *net.TCPConn { return resetConn(f.upstream, f.client) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startRelay(t, 0)
			// Some traffic first, so both copiers are in their loops.
			if _, err := f.client.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			readN(t, f.upstream, 1)
			if _, err := f.upstream.Write([]byte("yz")); err != nil {
				t.Fatal(err)
			}
			readN(t, f.client, 2)

			other := tt.reset(f)
			r := f.wait(t, 5*time.Second)
			if r.Err == nil {
				t.Errorf("Result.Err = nil after a reset, want the error (Result %+v)", r)
			} else if !errors.Is(r.Err, syscall.ECONNRESET) {
				t.Errorf("Result.Err = %v, want ECONNRESET", r.Err)
			}
			if r.Idle || r.Up != 1 || r.Down != 2 {
				t.Errorf("Result = %+v, want Up 1, Down 2, Idle false", r)
			}
			// The relay closed the other side too.
			other.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := other.Read(make([]byte, 1)); err == nil {
				t.Errorf("other end read %d bytes, want EOF or reset", n)
			} else if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Error("other end still open after the relay ended")
			}
		})
	}
}

// resetConn aborts c with an RST (SO_LINGER 0) and returns other.
func resetConn(c, other *net.TCPConn) *net.TCPConn {
	c.SetLinger(0)
	c.Close()
	return other
}

func readN(tb testing.TB, c *net.TCPConn, n int) {
	tb.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		tb.Fatalf("read %d bytes: %v", n, err)
	}
	c.SetReadDeadline(time.Time{})
}

// slack is how much later than its due time the idle timeout may end a
// flow: TCP_INFO counts in jiffies and the race detector slows timers.
const slack = 250 * time.Millisecond

func TestIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	f := startRelay(t, idle)
	r := f.wait(t, 5*time.Second)
	elapsed := time.Since(f.start)
	if !r.Idle || r.Err != nil || r.Up != 0 || r.Down != 0 {
		t.Errorf("Result = %+v, want Idle true, no error, no bytes", r)
	}
	if elapsed < idle-20*time.Millisecond || elapsed > idle+slack {
		t.Errorf("silent flow ended after %v, want about %v", elapsed, idle)
	}
	// Both ends are closed.
	for name, c := range map[string]*net.TCPConn{"client": f.client, "upstream": f.upstream} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("%s read after idle close: %v, want EOF", name, err)
		}
	}
}

func TestIdleTimeoutOneWayTrickle(t *testing.T) {
	const (
		idle   = 300 * time.Millisecond
		every  = 100 * time.Millisecond
		during = 1500 * time.Millisecond
	)
	tests := []struct {
		name     string
		sender   func(*flow) *net.TCPConn
		receiver func(*flow) *net.TCPConn
		count    func(relay.Result) int64
	}{
		{"client to upstream",
			func(f *flow) *net.TCPConn { return f.client },
			func(f *flow) *net.TCPConn { return f.upstream },
			func(r relay.Result) int64 { return r.Up }},
		{"upstream to client",
			func(f *flow) *net.TCPConn { return f.upstream },
			func(f *flow) *net.TCPConn { return f.client },
			func(r relay.Result) int64 { return r.Down }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startRelay(t, idle)
			snd, rcv := tt.sender(f), tt.receiver(f)
			var received atomic.Int64
			rdone := make(chan struct{})
			go func() {
				defer close(rdone)
				n, _ := io.Copy(io.Discard, rcv)
				received.Store(n)
			}()
			sent := 0
			var last time.Time
			for time.Since(f.start) < during {
				if _, err := snd.Write([]byte{'.'}); err != nil {
					t.Fatalf("write %d after %v: %v (relay running: %v)", sent+1, time.Since(f.start), err, f.running())
				}
				last = time.Now()
				sent++
				time.Sleep(every)
				if !f.running() {
					t.Fatalf("relay ended after %v although a byte arrives every %v (idle %v)", time.Since(f.start), every, idle)
				}
			}
			// The trickle stops; now the flow is idle.
			r := f.wait(t, 5*time.Second)
			quietFor := time.Since(last)
			<-rdone
			if !r.Idle || r.Err != nil {
				t.Errorf("Result = %+v, want Idle true and no error", r)
			}
			if got := tt.count(r); got != int64(sent) || received.Load() != int64(sent) {
				t.Errorf("counted %d, received %d, want the %d sent", got, received.Load(), sent)
			}
			if quietFor < idle-20*time.Millisecond || quietFor > idle+slack+every {
				t.Errorf("flow ended %v after its last byte, want about %v", quietFor, idle)
			}
		})
	}
}

func TestIdleTimeoutDisabled(t *testing.T) {
	f := startRelay(t, 0)
	time.Sleep(400 * time.Millisecond)
	if !f.running() {
		t.Fatal("relay with idle 0 ended on its own")
	}
	f.client.Close()
	f.upstream.Close()
	if r := f.wait(t, 5*time.Second); r.Idle || r.Err != nil {
		t.Errorf("Result = %+v, want normal end", r)
	}
}

func TestIdleTimer(t *testing.T) {
	const d = 100 * time.Millisecond
	tests := []struct {
		name string
		// quiet returns these values at successive checks, the last one
		// from then on.
		quiet      []time.Duration
		stopAfter  time.Duration // 0: never Stop before the deadline
		wantExpire bool
		wantAt     time.Duration // when expire should run
	}{
		{"quiet from the start", []time.Duration{d}, 0, true, d},
		{"quiet longer than d", []time.Duration{5 * d}, 0, true, d},
		{"busy once then quiet", []time.Duration{0, d}, 0, true, 2 * d},
		{"half quiet re-arms for the rest", []time.Duration{d / 2, d}, 0, true, d + d/2},
		{"busy twice", []time.Duration{d / 4, 0, d}, 0, true, d + 3*d/4 + d},
		{"stopped before firing", []time.Duration{d}, d / 2, false, 0},
		{"stopped after a re-arm", []time.Duration{0, d}, d + d/2, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var (
				mu      sync.Mutex
				checks  int
				expired = make(chan time.Time, 2)
			)
			quiet := func() time.Duration {
				mu.Lock()
				defer mu.Unlock()
				q := tt.quiet[min(checks, len(tt.quiet)-1)]
				checks++
				return q
			}
			start := time.Now()
			it := relay.StartIdleTimer(d, quiet, func() { expired <- time.Now() })
			if tt.stopAfter > 0 {
				time.Sleep(tt.stopAfter)
				it.Stop()
			}
			select {
			case at := <-expired:
				if !tt.wantExpire {
					t.Fatalf("expire called after %v despite Stop", at.Sub(start))
				}
				if got := at.Sub(start); got < tt.wantAt || got > tt.wantAt+slack {
					t.Errorf("expire called after %v, want about %v", got, tt.wantAt)
				}
			case <-time.After(tt.wantAt + 4*d + slack):
				if tt.wantExpire {
					t.Fatal("expire never called")
				}
			}
			it.Stop() // idempotent, also after expire
			select {
			case <-expired:
				t.Error("expire called twice")
			case <-time.After(2 * d):
			}
		})
	}
}

// TestSplice shows that the relay moves payload with splice(2), inside the
// kernel, rather than through read/write buffers: the relay runs in a child
// process (this test binary again) under strace, which records the child's
// splice calls and bytes; the test's ends stay in this process. A relay
// paced by a rate limiter must splice just the same.
func TestSplice(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MB transfer under strace")
	}
	strace, err := exec.LookPath("strace")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("strace not installed: CI must show that the relay splices")
		}
		t.Skip("strace not installed")
	}
	for _, tt := range []struct {
		name string
		rate string // bytes per second for the helper's limiter; "" unpaced
	}{
		{"unpaced", ""},
		{"paced 32 MiB/s", strconv.Itoa(32 << 20)},
	} {
		t.Run(tt.name, func(t *testing.T) { testSplice(t, strace, tt.rate) })
	}
}

func testSplice(t *testing.T, strace, rateEnv string) {
	const size = 64 << 20
	upLn, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer upLn.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	trace := t.TempDir() + "/strace.out"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, strace, "-f", "--seccomp-bpf", "-qq", "-e", "signal=none",
		"-e", "trace=splice,read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg,ioctl",
		"-o", trace, self)
	cmd.Env = append(os.Environ(), spliceHelperEnv+"="+upLn.Addr().String(), spliceRateEnv+"="+rateEnv)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() {
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	out := bufio.NewReader(stdout)
	line, err := out.ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		waited = true
		t.Fatalf("helper: %v (stderr: %s)", err, stderr.String())
	}
	clientAddr := strings.TrimSpace(line)

	client, err := net.Dial("tcp", clientAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	upLn.SetDeadline(time.Now().Add(30 * time.Second))
	upstream, err := upLn.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer upstream.Close()
	client.SetDeadline(time.Now().Add(50 * time.Second))
	upstream.SetDeadline(time.Now().Add(50 * time.Second))

	errc := make(chan error, 2)
	start := time.Now()
	chunk := randomBytes(t, 1<<20)
	go func() {
		var err error
		for i := 0; i < size/len(chunk) && err == nil; i++ {
			_, err = client.Write(chunk)
		}
		if err == nil {
			err = client.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	go func() {
		n, err := io.Copy(io.Discard, upstream)
		if err == nil && n != size {
			err = fmt.Errorf("upstream received %d bytes, want %d", n, size)
		}
		if err == nil {
			err = upstream.CloseWrite()
		}
		errc <- err
	}()
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if rest, err := io.ReadAll(client); err != nil || len(rest) != 0 {
		t.Fatalf("client read %d bytes, %v; want EOF", len(rest), err)
	}
	elapsed := time.Since(start)
	result, _ := io.ReadAll(out)
	err = cmd.Wait()
	waited = true
	if err != nil {
		t.Fatalf("helper: %v\nstdout: %s\nstderr: %s", err, result, stderr.String())
	}
	if want := fmt.Sprintf("up=%d down=0 err=<nil>", size); strings.TrimSpace(string(result)) != want {
		t.Errorf("helper result %q, want %q", result, want)
	}

	spliced, copied := traceBytes(t, trace)
	t.Logf("strace: %d bytes through splice, %d through read-family calls, in %v", spliced, copied, elapsed)
	if rateEnv != "" {
		// 64 MiB at 32 MiB/s: 2 s less the 1 MiB burst; strace only
		// slows it further.
		if elapsed < 1800*time.Millisecond {
			t.Errorf("paced relay moved %d bytes in %v, faster than its limit", size, elapsed)
		}
	}
	// Each spliced byte is counted twice: socket to pipe, pipe to socket.
	// Bursts under 16 KiB go through a small buffer instead, so allow 1 %.
	if spliced < 2*size*99/100 {
		t.Errorf("splice moved %d bytes, want at least 99%% of %d (2 x %d relayed)", spliced, 2*size, size)
	}
	if copied > size/100 {
		t.Errorf("read-family calls returned %d bytes for a %d-byte relay: payload went through user space", copied, size)
	}
	// An unpaced bulk flow starts each burst with a splice, as Go's own
	// splice does: no call to ask how much is queued (SIOCINQ) or whether
	// the peer has closed (a MSG_PEEK read) on the way. A paced one must
	// ask, to take tokens for what it will move.
	if rateEnv == "" {
		if queries := traceQueries(t, trace); queries != 0 {
			t.Errorf("an unpaced relay of %d bytes made %d SIOCINQ or MSG_PEEK calls, want none", size, queries)
		}
	}
}

// traceQuery matches a call that asks about a socket's receive queue
// rather than moving data: ioctl(FIONREAD, which strace prints for
// SIOCINQ) or a recvfrom with MSG_PEEK.
var traceQuery = regexp.MustCompile(`(?:ioctl\(\d+, FIONREAD|recvfrom\(.*MSG_PEEK)`)

// traceQueries counts the calls in an strace log that traceQuery matches.
func traceQueries(tb testing.TB, path string) int {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(data), "\n") {
		if traceQuery.MatchString(l) {
			n++
		}
	}
	return n
}

// traceLine matches a completed call, "PID splice(...) = N", or the second
// half of one that strace split because another thread ran meanwhile,
// "PID <... splice resumed>...) = N".
var traceLine = regexp.MustCompile(`^(?:\d+\s+)?(?:<\.\.\. )?(splice|read|readv|recvfrom|recvmsg)(?:\(| resumed>).*\)\s+=\s+(\d+)`)

// traceBytes sums the results of splice and of read-family calls in an
// strace log.
func traceBytes(tb testing.TB, path string) (spliced, read int64) {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		m := traceLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		n, _ := strconv.ParseInt(m[2], 10, 64)
		if m[1] == "splice" {
			spliced += n
		} else {
			read += n
		}
	}
	return spliced, read
}

// spliceHelper is the child of TestSplice: it accepts one client on
// loopback, dials the upstream named in the environment and relays between
// them, then prints the result.
func spliceHelper() int {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer ln.Close()
	fmt.Println(ln.Addr())
	ln.SetDeadline(time.Now().Add(30 * time.Second))
	client, err := ln.AcceptTCP()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	raddr, err := net.ResolveTCPAddr("tcp", os.Getenv(spliceHelperEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	upstream, err := net.DialTCP("tcp", nil, raddr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ch := make(chan relay.Result, 1)
	done := func(r relay.Result) { ch <- r }
	if bps, _ := strconv.Atoi(os.Getenv(spliceRateEnv)); bps > 0 {
		lim := rate.NewLimiter(rate.Limit(bps), 1<<20)
		relay.StartLimited(context.Background(), client, upstream, time.Minute, relay.Limits{Up: lim, Down: lim}, relay.Counts{}, done)
	} else {
		relay.Start(client, upstream, time.Minute, relay.Counts{}, done)
	}
	r := <-ch
	fmt.Printf("up=%d down=%d err=%v\n", r.Up, r.Down, r.Err)
	return 0
}
