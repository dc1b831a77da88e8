//go:build linux

package soak

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// The soak load's client side: tunnel loops in C, each opening SOCKS
// tunnels as its user through the daemon to the pattern server (see
// soak_server_test.go for the wire format) and verifying every exchange.

// ---------------------------------------------------------------------
// Client (in C).

type soakLoadParams struct {
	tunnels    int
	interval   time.Duration // mean pause between exchanges of a tunnel
	lifetime   time.Duration // mean life of a tunnel; 0: until the load stops
	maxChunk   int
	timeout    time.Duration // one exchange, one SOCKS handshake
	openConc   int           // SOCKS handshakes at once
	maxBackoff time.Duration // after a failed tunnel or handshake
}

// soakUserLoad is one user's share of the load and its counters.
type soakUserLoad struct {
	u nstest.User

	opened, cleanClosed, exchanges atomic.Int64
	connectFails, tunnelFails      atomic.Int64
	corrupt                        atomic.Int64
	wireUp, wireDown               atomic.Int64 // every byte after the SOCKS reply
	verifiedDown                   atomic.Int64 // payload checked against the pattern
	crossed                        atomic.Int64 // clean ends of tunnels older than the last mark
	lat                            soakHist     // one exchange
	open                           soakHist     // one successful SOCKS handshake
}

type soakSlot struct {
	id     int
	user   *soakUserLoad
	gen    atomic.Uint32
	lastOK atomic.Int64 // unix ns of the last verified exchange
	live   atomic.Bool  // has a tunnel through the proxy now
}

// soakEvent is a failure seen by the load.
type soakEvent struct {
	at   time.Time
	slot int
	user string
	kind string // connect, reply, exchange, corrupt, end
	err  string
}

type soakLoad struct {
	p      soakLoadParams
	topo   *topology
	users  []*soakUserLoad
	slots  []*soakSlot
	bufs   *soakBufs
	stop   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}
	wg     sync.WaitGroup
	start  time.Time

	// marks counts events of the test (reloads, flaps); a tunnel that
	// ends cleanly after living across one counts as crossed.
	marks  atomic.Int64
	probes atomic.Int64
	stalls soakStalls // of this process

	mu     sync.Mutex // guards events, texts and users (probes may add one)
	events []soakEvent
	texts  map[string]int // events with their text kept, by user/kind
}

// startSoakLoad starts p.tunnels tunnel loops, slot i as users[i % len].
// Each loop opens a tunnel, exchanges on it until its lifetime ends, ends
// it cleanly and opens the next; after a failure it records the event and
// opens a new one after a backoff.
func startSoakLoad(t *testing.T, topo *topology, p soakLoadParams, users ...nstest.User) *soakLoad {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &soakLoad{p: p, topo: topo, bufs: newSoakBufs(p.maxChunk), stop: make(chan struct{}),
		ctx: ctx, cancel: cancel, sem: make(chan struct{}, p.openConc), start: time.Now(), texts: map[string]int{}}
	for _, u := range users {
		l.users = append(l.users, &soakUserLoad{u: u})
	}
	l.wg.Go(func() { l.stalls.run(l.stop) })
	for i := range p.tunnels {
		s := &soakSlot{id: i, user: l.users[i%len(users)]}
		l.slots = append(l.slots, s)
		l.wg.Go(func() { l.run(s) })
	}
	t.Cleanup(func() { l.finish(t, 2*p.timeout) })
	return l
}

func (l *soakLoad) stopping() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

// sleep waits d or until the load stops; it reports whether it slept.
func (l *soakLoad) sleep(d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-l.stop:
		return false
	}
}

func (l *soakLoad) event(s *soakSlot, kind string, err error) {
	e := soakEvent{at: time.Now(), slot: s.id, user: s.user.u.Name, kind: kind}
	l.mu.Lock()
	defer l.mu.Unlock()
	// A long flap run sees millions of expected failures: keep the text
	// of the first few of each kind only.
	key := e.user + "/" + kind
	if l.texts[key] < 20 {
		l.texts[key]++
		e.err = err.Error()
	}
	l.events = append(l.events, e)
}

// eventsCopy returns the failures so far.
func (l *soakLoad) eventsCopy() []soakEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

func (l *soakLoad) run(s *soakSlot) {
	rng := rand.New(rand.NewPCG(uint64(s.id), 0x10ad))
	backoff := 50 * time.Millisecond
	for !l.stopping() {
		err := l.tunnel(s, rng)
		if err == nil {
			backoff = 50 * time.Millisecond
			continue
		}
		if l.stopping() {
			return
		}
		// Jittered exponential backoff: a cut NIC's users must not
		// hammer the proxy with refused handshakes.
		if !l.sleep(time.Duration(float64(backoff) * (0.5 + rng.Float64()))) {
			return
		}
		backoff = min(2*backoff, l.p.maxBackoff)
	}
}

// open performs the SOCKS handshake for slot s.
func (l *soakLoad) open(s *soakSlot) (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.stop:
		return nil, nil
	}
	defer func() { <-l.sem }()
	ctx, cancel := context.WithTimeout(l.ctx, l.p.timeout)
	defer cancel()
	start := time.Now()
	c, auth, reply, err := l.handshake(ctx, s.user.u, soakTarget(s.id))
	if err != nil {
		if l.stopping() {
			return nil, nil
		}
		s.user.connectFails.Add(1)
		l.event(s, "connect", err)
		return nil, err
	}
	if c == nil {
		err := fmt.Errorf("auth status %d, reply %d", auth, reply)
		s.user.connectFails.Add(1)
		l.event(s, "reply", err)
		return nil, err
	}
	s.user.open.add(time.Since(start))
	return c, nil
}

func soakTarget(id int) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(svcV4), uint16(soakPorts[id%len(soakPorts)]))
}

// handshake dials the proxy from C and performs the greeting, RFC 1929
// authentication and a CONNECT to target, one step at a time (so that a
// refusal is read before the server closes). It returns the tunnel, or nil
// and the RFC 1929 status and reply code (-1 where not reached). Unlike
// socksDo, every step including the TCP connect is bounded by ctx alone:
// a host shared with other work can stall a process for seconds, and a
// stall is not the proxy's failure.
func (l *soakLoad) handshake(ctx context.Context, u nstest.User, target netip.AddrPort) (net.Conn, int, int, error) {
	c, err := nstest.Dialer{NS: l.topo.C, Timeout: l.p.timeout}.DialContext(ctx, "tcp4", soakListen)
	if err != nil {
		return nil, -1, -1, err
	}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	if d, has := ctx.Deadline(); has {
		_ = c.SetDeadline(d)
	}
	var b [10]byte
	if _, err := c.Write([]byte{5, 1, 2}); err != nil {
		return nil, -1, -1, err
	}
	if _, err := io.ReadFull(c, b[:2]); err != nil || b[0] != 5 || b[1] != 2 {
		return nil, -1, -1, fmt.Errorf("method selection % x: %v", b[:2], err)
	}
	msg := append([]byte{1, byte(len(u.Name))}, u.Name...)
	msg = append(append(msg, byte(len(u.Password))), u.Password...)
	if _, err := c.Write(msg); err != nil {
		return nil, -1, -1, err
	}
	if _, err := io.ReadFull(c, b[:2]); err != nil || b[0] != 1 {
		return nil, -1, -1, fmt.Errorf("auth status % x: %v", b[:2], err)
	}
	if b[1] != 0 {
		return nil, int(b[1]), -1, nil
	}
	ip := target.Addr().As4()
	msg = append(append([]byte{5, 1, 0, 1}, ip[:]...), byte(target.Port()>>8), byte(target.Port()))
	if _, err := c.Write(msg); err != nil {
		return nil, 0, -1, err
	}
	// An IPv4 BND.ADDR (the daemon's outbound socket) makes 10 bytes.
	if _, err := io.ReadFull(c, b[:4]); err != nil || b[0] != 5 {
		return nil, 0, -1, fmt.Errorf("connect reply % x: %v", b[:4], err)
	}
	if b[1] != 0 {
		return nil, 0, int(b[1]), nil
	}
	if b[3] != 1 {
		return nil, 0, 0, fmt.Errorf("connect reply address type %d, want 1 (IPv4)", b[3])
	}
	if _, err := io.ReadFull(c, b[4:10]); err != nil {
		return nil, 0, 0, fmt.Errorf("connect reply address: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	ok = true
	return c, 0, 0, nil
}

// tunnel runs one tunnel of slot s from handshake to clean end. It returns
// nil if the tunnel ended cleanly or was never opened because the load is
// stopping.
func (l *soakLoad) tunnel(s *soakSlot, rng *rand.Rand) error {
	c, err := l.open(s)
	if err != nil || c == nil {
		return err
	}
	return l.drive(s, c, rng, 0)
}

// drive runs the exchanges of an open tunnel until its lifetime ends, the
// load stops, or (if maxExchanges > 0) after maxExchanges, then ends it
// cleanly. It closes c.
func (l *soakLoad) drive(s *soakSlot, c net.Conn, rng *rand.Rand, maxExchanges int) error {
	defer c.Close()
	u := s.user
	u.opened.Add(1)
	mark := l.marks.Load()
	gen := s.gen.Add(1)
	s.live.Store(true)
	defer s.live.Store(false)
	seed := uint64(s.id)<<32 | uint64(gen)
	up, down := soakPattern(seed, 'u'), soakPattern(seed, 'd')
	var wireUp, wireDown, payloadUp int64
	defer func() { u.wireUp.Add(wireUp); u.wireDown.Add(wireDown) }()
	fail := func(kind string, err error) error {
		if kind == "corrupt" {
			u.corrupt.Add(1)
		}
		u.tunnelFails.Add(1)
		err = fmt.Errorf("tunnel %d.%d after %d bytes up, %d down: %w", s.id, gen, wireUp, wireDown, err)
		l.event(s, kind, err)
		return err
	}

	var hello [soakHelloLen]byte
	copy(hello[:], soakMagic)
	binary.BigEndian.PutUint64(hello[4:], seed)
	_ = c.SetDeadline(time.Now().Add(l.p.timeout))
	if _, err := c.Write(hello[:]); err != nil {
		return fail("exchange", err)
	}
	wireUp += soakHelloLen
	var endAt time.Time
	if l.p.lifetime > 0 && maxExchanges == 0 {
		endAt = time.Now().Add(time.Duration(float64(l.p.lifetime) * (0.5 + rng.Float64())))
	}
	// The first exchange at a random point of the interval spreads the load.
	pause := time.Duration(rng.Float64() * float64(l.p.interval))
	if maxExchanges > 0 {
		pause = 0
	}
	for n := 0; maxExchanges == 0 || n < maxExchanges; n++ {
		if !l.sleep(pause) || (!endAt.IsZero() && time.Now().After(endAt)) {
			break
		}
		start := time.Now()
		up2, down2, kind, err := l.exchange(c, up, down, rng)
		wireUp += up2
		wireDown += down2
		if err != nil {
			return fail(kind, err)
		}
		u.lat.add(time.Since(start))
		u.exchanges.Add(1)
		u.verifiedDown.Add(down2 - 4)
		payloadUp += up2 - 4
		s.lastOK.Store(time.Now().UnixNano())
		pause = time.Duration(float64(l.p.interval) * (0.5 + rng.Float64()))
	}
	// Clean end: a zero frame, the server's count, then its close.
	_ = c.SetDeadline(time.Now().Add(l.p.timeout))
	if _, err := c.Write(make([]byte, 4)); err != nil {
		return fail("end", err)
	}
	wireUp += 4
	var count [8]byte
	if k, err := io.ReadFull(c, count[:]); err != nil {
		wireDown += int64(k)
		return fail("end", fmt.Errorf("reading the server's count: %w", err))
	}
	wireDown += 8
	if got := binary.BigEndian.Uint64(count[:]); got != uint64(payloadUp) {
		return fail("corrupt", fmt.Errorf("the server verified %d bytes of the %d sent", got, payloadUp))
	}
	var b [1]byte
	if n, err := c.Read(b[:]); !errors.Is(err, io.EOF) {
		wireDown += int64(n)
		return fail("end", fmt.Errorf("after the end frame: read %d bytes, %v; want EOF", n, err))
	}
	u.cleanClosed.Add(1)
	if l.marks.Load() != mark {
		u.crossed.Add(1)
	}
	return nil
}

// probe opens one tunnel as u outside the load's slots and, if the proxy
// accepts it, runs one exchange on it and ends it. It returns the RFC 1929
// status and the reply code (-1 where not reached).
func (l *soakLoad) probe(u nstest.User) (auth, reply int, err error) {
	s := &soakSlot{id: 1<<24 + int(l.probes.Add(1)), user: l.userFor(u)}
	ctx, cancel := context.WithTimeout(l.ctx, l.p.timeout)
	defer cancel()
	start := time.Now()
	c, auth, reply, err := l.handshake(ctx, u, soakTarget(s.id))
	if err != nil || c == nil {
		return auth, reply, err
	}
	s.user.open.add(time.Since(start))
	return 0, 0, l.drive(s, c, rand.New(rand.NewPCG(uint64(s.id), 0x9b)), 1)
}

// userFor returns the counters of u, adding them for a user of probes only.
func (l *soakLoad) userFor(u nstest.User) *soakUserLoad {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ul := range l.users {
		if ul.u.Name == u.Name {
			return ul
		}
	}
	ul := &soakUserLoad{u: u}
	l.users = append(l.users, ul)
	return ul
}

// usersCopy returns every user's counters.
func (l *soakLoad) usersCopy() []*soakUserLoad {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.users)
}

// exchange sends one frame and verifies the answer; it returns the bytes
// moved each way and, on failure, the kind of failure.
func (l *soakLoad) exchange(c net.Conn, up, down *rand.ChaCha8, rng *rand.Rand) (int64, int64, string, error) {
	buf, want := l.bufs.get(), l.bufs.get()
	defer l.bufs.put(buf)
	defer l.bufs.put(want)
	n := 1 + rng.IntN(l.p.maxChunk)
	out := (*buf)[:4+n]
	binary.BigEndian.PutUint32(out, uint32(n))
	_, _ = up.Read(out[4:])
	_ = c.SetDeadline(time.Now().Add(l.p.timeout))
	w, err := c.Write(out)
	if err != nil {
		return int64(w), 0, "exchange", fmt.Errorf("write: %w", err)
	}
	var hdr [4]byte
	if k, err := io.ReadFull(c, hdr[:]); err != nil {
		return int64(w), int64(k), "exchange", fmt.Errorf("read answer header: %w", err)
	}
	m := int(binary.BigEndian.Uint32(hdr[:]))
	if m < 1 || m > l.p.maxChunk {
		return int64(w), 4, "corrupt", fmt.Errorf("answer length %d, want 1..%d", m, l.p.maxChunk)
	}
	got := (*buf)[:m]
	if k, err := io.ReadFull(c, got); err != nil {
		return int64(w), int64(4 + k), "exchange", fmt.Errorf("read %d-byte answer: %w", m, err)
	}
	_, _ = down.Read((*want)[:m])
	if !bytes.Equal(got, (*want)[:m]) {
		return int64(w), int64(4 + m), "corrupt", fmt.Errorf("%d-byte answer differs from the pattern", m)
	}
	return int64(w), int64(4 + m), "", nil
}

// finish stops the load: every tunnel ends its exchange and then ends
// cleanly. It waits at most limit for the loops.
func (l *soakLoad) finish(tb testing.TB, limit time.Duration) {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
		l.cancel() // handshakes in flight
		tb.Errorf("load: tunnel loops still running %v after the stop", limit)
		<-done
	}
	l.cancel()
}

// liveCount counts the slots with a tunnel now; of user if not empty.
func (l *soakLoad) liveCount(user string) int {
	n := 0
	for _, s := range l.slots {
		if (user == "" || s.user.u.Name == user) && s.live.Load() {
			n++
		}
	}
	return n
}

// waitAllVerified waits (bounded) until every slot has verified an
// exchange after since, and returns how long it took.
func (l *soakLoad) waitAllVerified(tb testing.TB, since time.Time, limit time.Duration) time.Duration {
	tb.Helper()
	start := time.Now()
	for {
		missing := 0
		for _, s := range l.slots {
			if s.lastOK.Load() < since.UnixNano() {
				missing++
			}
		}
		if missing == 0 {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			tb.Fatalf("%d of %d tunnels verified no exchange within %v after %v; failures so far: %s",
				missing, len(l.slots), limit, since.Format(time.TimeOnly), l.summarizeEvents(l.eventsCopy(), 5))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// totals sums the users' counters.
func (l *soakLoad) totals() (opened, clean, exchanges, fails, connectFails, corrupt, wireUp, wireDown, verifiedDown int64) {
	for _, u := range l.usersCopy() {
		opened += u.opened.Load()
		clean += u.cleanClosed.Load()
		exchanges += u.exchanges.Load()
		fails += u.tunnelFails.Load()
		connectFails += u.connectFails.Load()
		corrupt += u.corrupt.Load()
		wireUp += u.wireUp.Load()
		wireDown += u.wireDown.Load()
		verifiedDown += u.verifiedDown.Load()
	}
	return
}

// summarizeEvents counts failures by user and kind, with up to n examples.
func (l *soakLoad) summarizeEvents(evs []soakEvent, n int) string {
	if len(evs) == 0 {
		return "none"
	}
	counts := map[string]int{}
	for _, e := range evs {
		counts[e.user+"/"+e.kind]++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d: %v; e.g.", len(evs), counts)
	// Examples with their text first, then by time only.
	shown := 0
	for _, withText := range []bool{true, false} {
		for _, e := range evs {
			if shown >= n {
				break
			}
			if (e.err != "") != withText {
				continue
			}
			shown++
			text := e.err
			if text == "" {
				text = "(text not kept)"
			}
			fmt.Fprintf(&b, "\n  %s %s slot %d %s: %s", e.at.Format("15:04:05.000"), e.user, e.slot, e.kind, text)
		}
	}
	return b.String()
}

func (l *soakLoad) report(tb testing.TB) {
	tb.Helper()
	for _, u := range l.usersCopy() {
		tb.Logf("load %s (%s): %d tunnels opened, %d ended cleanly (%d of them across a reload/flap), %d exchanges, %d tunnel failures, %d handshake failures, %d corrupt; wire %.1f MB up / %.1f MB down, %.1f MB down payload verified; exchange latency %s; handshake %s",
			u.u.Name, u.u.Interface, u.opened.Load(), u.cleanClosed.Load(), u.crossed.Load(), u.exchanges.Load(), u.tunnelFails.Load(),
			u.connectFails.Load(), u.corrupt.Load(), float64(u.wireUp.Load())/1e6, float64(u.wireDown.Load())/1e6,
			float64(u.verifiedDown.Load())/1e6, u.lat.String(), u.open.String())
	}
}

// ---------------------------------------------------------------------
// Latency histogram: powers of two of microseconds.

type soakHist struct {
	b   [32]atomic.Int64
	max atomic.Int64
}

func (h *soakHist) add(d time.Duration) {
	us := max(d.Microseconds(), 1)
	i := min(63-bits.LeadingZeros64(uint64(us)), len(h.b)-1)
	h.b[i].Add(1)
	for {
		m := h.max.Load()
		if int64(d) <= m || h.max.CompareAndSwap(m, int64(d)) {
			break
		}
	}
}

// quantile returns the upper bound of the bucket holding quantile q.
func (h *soakHist) quantile(q float64) time.Duration {
	var total int64
	for i := range h.b {
		total += h.b[i].Load()
	}
	if total == 0 {
		return 0
	}
	want, seen := int64(q*float64(total)), int64(0)
	for i := range h.b {
		seen += h.b[i].Load()
		if seen > want {
			return time.Duration(int64(2)<<uint(i)) * time.Microsecond
		}
	}
	return time.Duration(h.max.Load())
}

func (h *soakHist) String() string {
	return fmt.Sprintf("p50 <%v p99 <%v max %v", h.quantile(0.5), h.quantile(0.99), time.Duration(h.max.Load()).Round(time.Microsecond))
}
