//go:build linux

package soak

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// The soak load's server side: a pattern server in U, run as copies of
// this test binary (soakServerEnv) so that the test process holds only the
// client sockets: a host's descriptor limit (20,000 here, and not
// raisable without CAP_SYS_RESOURCE) must fit 10,000 tunnels' worth of
// sockets in each process, and the daemon needs two per tunnel already.
//
// Wire format, inside the tunnel. The client opens with a 16-byte hello
// ("IFSS", an 8-byte seed, 4 zero bytes); both ends then derive two
// ChaCha8 streams from the seed, one per direction. Each exchange is a
// client frame (4-byte big-endian length n, 1 <= n <= max, then the next n
// bytes of the up stream) which the server verifies, answered by a server
// frame of the down stream which the client verifies. Every byte sent is
// verified by the other end before the next exchange starts, so a lost
// byte shows up as a timeout and a changed one as a mismatch. A zero
// frame ends the tunnel: the server answers with the 8-byte count of up
// payload it verified on the tunnel and closes; the client checks the
// count and then must read EOF (the server's close passed on through the
// proxy). The count tells a clean end from a cut that happens to come
// while the client waits for the end.

const (
	soakHelloLen  = 16
	soakMagic     = "IFSS"
	soakServerEnv = "IFSS_SOAK_SERVER" // "ports=7101,7103 idle=36s chunk=8192"
)

// soakPorts spread the (source, target) tuples; tunnel i uses
// soakPorts[i%4], so alice's (even) and bob's (odd) tunnels meet
// different server processes.
var soakPorts = []int{7101, 7102, 7103, 7104}

func soakPattern(seed uint64, dir byte) *rand.ChaCha8 {
	var key [32]byte
	binary.BigEndian.PutUint64(key[:], seed)
	key[8] = dir
	copy(key[9:], soakMagic)
	return rand.NewChaCha8(key)
}

// soakBufs holds the frame buffers; a tunnel holds one only during an
// exchange, so 10,000 mostly idle tunnels need few.
type soakBufs struct{ pool sync.Pool }

func newSoakBufs(maxChunk int) *soakBufs {
	b := &soakBufs{}
	b.pool.New = func() any { s := make([]byte, 4+maxChunk); return &s }
	return b
}

func (b *soakBufs) get() *[]byte  { return b.pool.Get().(*[]byte) }
func (b *soakBufs) put(p *[]byte) { b.pool.Put(p) }

// soakServerStats is what a server process reports, one JSON line every
// 250 ms and a last one when it stops.
type soakServerStats struct {
	Accepted   int64  `json:"accepted"`
	CleanEnds  int64  `json:"clean_ends"`
	Corrupt    int64  `json:"corrupt"`
	Timeouts   int64  `json:"timeouts"`
	OtherErrs  int64  `json:"other_errors"`
	UpVerified int64  `json:"up_verified"`
	DownSent   int64  `json:"down_sent"`
	Open       int    `json:"open"`
	FirstErr   string `json:"first_error,omitempty"`
	Final      bool   `json:"final,omitempty"`
	// The longest this process went unscheduled, and when.
	MaxStall time.Duration `json:"max_stall"`
	StallAt  time.Time     `json:"stall_at"`
}

func (a soakServerStats) add(b soakServerStats) soakServerStats {
	a.Accepted += b.Accepted
	a.CleanEnds += b.CleanEnds
	a.Corrupt += b.Corrupt
	a.Timeouts += b.Timeouts
	a.OtherErrs += b.OtherErrs
	a.UpVerified += b.UpVerified
	a.DownSent += b.DownSent
	a.Open += b.Open
	if a.FirstErr == "" {
		a.FirstErr = b.FirstErr
	}
	if b.MaxStall > a.MaxStall {
		a.MaxStall, a.StallAt = b.MaxStall, b.StallAt
	}
	return a
}

// soakStalls measures how late a 100 ms ticker is served. A process, or
// the whole host, that goes unscheduled for seconds shows up as a late
// tick; the tests report it next to their latencies, so that a timeout
// during a host-wide stall (a busy shared machine, a paused VM) can be
// told from a failure of the proxy.
type soakStalls struct {
	mu  sync.Mutex
	max time.Duration
	at  time.Time
}

func (w *soakStalls) run(stop <-chan struct{}) {
	const tick = 100 * time.Millisecond
	tk := time.NewTicker(tick)
	defer tk.Stop()
	last := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-tk.C:
		}
		now := time.Now()
		if late := now.Sub(last) - tick; late > 0 {
			w.mu.Lock()
			if late > w.max {
				w.max, w.at = late, last
			}
			w.mu.Unlock()
		}
		last = now
	}
}

func (w *soakStalls) get() (time.Duration, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.max, w.at
}

// ---------------------------------------------------------------------
// In the server process.

type soakServer struct {
	stalls   soakStalls
	ls       []net.Listener
	idle     time.Duration
	maxChunk int
	bufs     *soakBufs
	wg       sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}

	accepted, cleanEnds, corrupt, timeouts, otherErrs atomic.Int64
	upVerified, downSent                              atomic.Int64
	firstErr                                          atomic.Value // string
}

// soakServerMain is the whole server process: listen on svcV4 at the
// given ports (it runs inside U), report, stop on SIGTERM.
func soakServerMain(spec string) int {
	var ports []int
	var idle time.Duration
	var chunk int
	for _, kv := range strings.Fields(spec) {
		k, v, _ := strings.Cut(kv, "=")
		var err error
		switch k {
		case "ports":
			for _, p := range strings.Split(v, ",") {
				var n int
				if n, err = strconv.Atoi(p); err == nil {
					ports = append(ports, n)
				}
			}
		case "idle":
			idle, err = time.ParseDuration(v)
		case "chunk":
			chunk, err = strconv.Atoi(v)
		default:
			err = errors.New("unknown key")
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %q: %v\n", soakServerEnv, kv, err)
			return 2
		}
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	s := &soakServer{idle: idle, maxChunk: chunk, bufs: newSoakBufs(chunk), conns: map[net.Conn]struct{}{}}
	for _, port := range ports {
		l, err := net.Listen("tcp4", net.JoinHostPort(svcV4, strconv.Itoa(port)))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		s.ls = append(s.ls, l)
		s.wg.Go(func() { s.accept(l) })
	}
	stopStalls := make(chan struct{})
	defer close(stopStalls)
	go s.stalls.run(stopStalls)
	enc := json.NewEncoder(os.Stdout)
	_ = enc.Encode(s.stats()) // the first line says: listening
	tk := time.NewTicker(250 * time.Millisecond)
	defer tk.Stop()
	for {
		select {
		case <-tk.C:
			if enc.Encode(s.stats()) != nil {
				s.close() // the test is gone
				return 1
			}
		case <-stop:
			s.close()
			st := s.stats()
			st.Final = true
			_ = enc.Encode(st)
			return 0
		}
	}
}

func (s *soakServer) stats() soakServerStats {
	s.mu.Lock()
	open := len(s.conns)
	s.mu.Unlock()
	st := soakServerStats{Accepted: s.accepted.Load(), CleanEnds: s.cleanEnds.Load(), Corrupt: s.corrupt.Load(),
		Timeouts: s.timeouts.Load(), OtherErrs: s.otherErrs.Load(), UpVerified: s.upVerified.Load(),
		DownSent: s.downSent.Load(), Open: open}
	st.FirstErr, _ = s.firstErr.Load().(string)
	st.MaxStall, st.StallAt = s.stalls.get()
	return st
}

func (s *soakServer) accept(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.fail(&s.otherErrs, fmt.Errorf("accept: %w", err))
			time.Sleep(10 * time.Millisecond) // EMFILE and the like: retry
			continue
		}
		s.mu.Lock()
		if s.conns == nil { // closing
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.accepted.Add(1)
		s.wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.serve(c)
		})
	}
}

func (s *soakServer) close() {
	for _, l := range s.ls {
		l.Close()
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *soakServer) fail(kind *atomic.Int64, err error) {
	kind.Add(1)
	s.firstErr.CompareAndSwap(nil, err.Error())
}

func (s *soakServer) serve(c net.Conn) {
	var hello [soakHelloLen]byte
	_ = c.SetDeadline(time.Now().Add(s.idle))
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		s.ioFail(err)
		return
	}
	if string(hello[:4]) != soakMagic {
		s.fail(&s.corrupt, fmt.Errorf("hello % x", hello))
		return
	}
	seed := binary.BigEndian.Uint64(hello[4:12])
	up, down := soakPattern(seed, 'u'), soakPattern(seed, 'd')
	rng := rand.New(rand.NewPCG(seed, 0x5e))
	var verified uint64
	for {
		var hdr [4]byte
		_ = c.SetDeadline(time.Now().Add(s.idle))
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			s.ioFail(err)
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[:]))
		if n == 0 {
			if _, err := c.Write(binary.BigEndian.AppendUint64(nil, verified)); err != nil {
				s.ioFail(err)
				return
			}
			s.cleanEnds.Add(1)
			return // our close is the client's EOF
		}
		if n > s.maxChunk {
			s.fail(&s.corrupt, fmt.Errorf("frame length %d > %d", n, s.maxChunk))
			return
		}
		if err := s.exchange(c, n, up, down, rng); err != nil {
			return
		}
		verified += uint64(n)
	}
}

func (s *soakServer) exchange(c net.Conn, n int, up, down *rand.ChaCha8, rng *rand.Rand) error {
	got, want := s.bufs.get(), s.bufs.get()
	defer s.bufs.put(got)
	defer s.bufs.put(want)
	if _, err := io.ReadFull(c, (*got)[:n]); err != nil {
		s.ioFail(err)
		return err
	}
	_, _ = up.Read((*want)[:n])
	if !bytes.Equal((*got)[:n], (*want)[:n]) {
		err := fmt.Errorf("up stream: %d-byte frame differs from the pattern", n)
		s.fail(&s.corrupt, err)
		return err
	}
	s.upVerified.Add(int64(n))
	m := 1 + rng.IntN(s.maxChunk)
	out := (*got)[:4+m]
	binary.BigEndian.PutUint32(out, uint32(m))
	_, _ = down.Read(out[4:])
	if _, err := c.Write(out); err != nil {
		s.ioFail(err)
		return err
	}
	s.downSent.Add(int64(m))
	return nil
}

func (s *soakServer) ioFail(err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s.fail(&s.timeouts, err)
	} else if !errors.Is(err, net.ErrClosed) {
		s.fail(&s.otherErrs, err)
	}
}

// ---------------------------------------------------------------------
// In the test process.

// soakServerProc is one server process, seen from the test.
type soakServerProc struct {
	cmd    *exec.Cmd
	stderr *nstest.LogBuffer
	done   chan struct{} // stdout read to its end and the process waited for
	err    error

	mu    sync.Mutex
	last  soakServerStats
	lines int
}

type soakServers []*soakServerProc

// startSoakServers starts two server processes in ns, one for the ports
// of alice's tunnels and one for bob's, and waits until both listen. They
// are stopped at the end of the test.
func startSoakServers(t *testing.T, ns string, idle time.Duration, maxChunk int) soakServers {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var ss soakServers
	for _, ports := range []string{"7101,7103", "7102,7104"} {
		p := &soakServerProc{stderr: &nstest.LogBuffer{}, done: make(chan struct{})}
		p.cmd = exec.Command("ip", "netns", "exec", ns, self)
		p.cmd.Env = append(append([]string{}, nstest.CleanEnv...),
			fmt.Sprintf("%s=ports=%s idle=%v chunk=%d", soakServerEnv, ports, idle, maxChunk))
		p.cmd.Stderr = p.stderr
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := p.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go p.read(out)
		ss = append(ss, p)
		t.Cleanup(func() { p.stop(t) })
	}
	for _, p := range ss {
		for deadline := time.Now().Add(15 * time.Second); p.lineCount() == 0; time.Sleep(20 * time.Millisecond) {
			select {
			case <-p.done:
				t.Fatalf("soak server exited before listening: %v; stderr: %s", p.err, p.stderr.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("soak server not listening after 15s; stderr: %s", p.stderr.String())
			}
		}
	}
	return ss
}

func (p *soakServerProc) read(out io.Reader) {
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var st soakServerStats
		if json.Unmarshal(sc.Bytes(), &st) != nil {
			continue
		}
		p.mu.Lock()
		p.last, p.lines = st, p.lines+1
		p.mu.Unlock()
	}
	p.err = p.cmd.Wait()
	close(p.done)
}

func (p *soakServerProc) lineCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lines
}

func (p *soakServerProc) stop(t *testing.T) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Errorf("soak server still running 15s after SIGTERM; killed it")
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.mu.Lock()
	final := p.last.Final
	p.mu.Unlock()
	if p.err != nil || !final {
		t.Errorf("soak server: exit %v, final report %v; stderr: %s", p.err, final, p.stderr.String())
	}
}

// stats returns the servers' counters summed, each from a report written
// after the call (bounded wait), so everything done before it is in.
func (ss soakServers) stats(tb testing.TB) soakServerStats {
	tb.Helper()
	var sum soakServerStats
	for _, p := range ss {
		// The line after next was certainly begun after this call.
		want := p.lineCount() + 2
		for deadline := time.Now().Add(10 * time.Second); p.lineCount() < want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				tb.Fatalf("soak server sent no report for 10s; stderr: %s", p.stderr.String())
			}
		}
		p.mu.Lock()
		sum = sum.add(p.last)
		p.mu.Unlock()
	}
	return sum
}
