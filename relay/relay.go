// Package relay moves bytes between two TCP connections for the life of a
// flow: both directions at once, half-close passed through, an idle
// timeout, and byte counts.
//
// Payload moves between the sockets of the two *net.TCPConn values by
// splice(2) on Linux: bulk data goes through the kernel and never through a
// user-space buffer. The copy loops work on the raw descriptors and so
// cannot count reads as they happen, which is why idle time is read from
// the kernel (TCP_INFO) instead of being tracked per read.
//
// An idle flow holds no buffer and no pipe: each direction waits for its
// socket to become readable first, then takes a pooled buffer for a small
// read and, when more is queued, a pooled pipe for splice, and gives both
// back as soon as the socket has nothing queued. A direction whose socket
// stays quiet for a whole parkAfter (100 ms) gives up its goroutine too: its
// socket waits in the lot (park_linux.go), one epoll instance for the
// process, and a new goroutine takes the direction on when the socket is
// readable. A tunnel that sits idle for hours costs its two sockets and
// its flow record; no goroutine, stack, buffer or pipe.
//
// It is part of the ifsocks program, not a public API: exported names
// serve the other packages of this module and change with them.
package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"
)

// PanicError is a panic recovered in a relay goroutine. The flow ends as
// if by an error of this host (both connections closed, done called) and
// Result.Err is the *PanicError, so the caller can log the stack; other
// flows are not touched.
type PanicError struct {
	Value any    // what was passed to panic
	Stack []byte // the panicking goroutine's stack
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic in relay: %v", e.Value) }

// Result describes a finished relay.
type Result struct {
	Up   int64 // bytes from client to upstream
	Down int64 // bytes from upstream to client
	// Err is the first error that ended the relay, nil when both sides
	// closed normally (EOF in both directions) or the idle timeout hit.
	Err error
	// Idle is set when the relay was ended by the idle timeout.
	Idle bool
}

// Counts receive the bytes each direction moves while the flow runs, for
// accounting and quotas: one atomic add per read or splice, so a counter
// shared by all of a user's flows knows its traffic within one such step.
// A nil pointer counts nothing; the zero Counts counts nothing.
type Counts struct {
	Up   *atomic.Int64 // client to upstream
	Down *atomic.Int64 // upstream to client
}

// add adds n to a live counter, if there is one.
func add(c *atomic.Int64, n int64) {
	if c != nil && n > 0 {
		c.Add(n)
	}
}

// Start relays between client and upstream in two new goroutines and
// returns at once. When both directions have ended, one fails, or neither
// has received data for idle (0 disables the idle timeout), both
// connections are closed and done is called once, from one of those
// goroutines, with the result. cnt is added to as bytes move.
//
// A direction whose socket stays quiet for parkAfter leaves its goroutine
// for the lot (park_linux.go) until the socket is readable again. The
// connections must therefore be closed by the returned Flow's Close, never
// directly, to cut the flow: the lot cannot see a descriptor closed under it.
func Start(client, upstream *net.TCPConn, idle time.Duration, cnt Counts, done func(Result)) *Flow {
	f := &Flow{conns: [2]*net.TCPConn{client, upstream}, done: done, pending: 2}
	f.halves[0] = half{f: f, dst: upstream, src: client, count: &f.up, live: cnt.Up}
	f.halves[1] = half{f: f, dst: client, src: upstream, count: &f.down, live: cnt.Down}
	f.rawConns()
	if idle > 0 {
		f.timer.start(idle, f)
	}
	go f.run(&f.halves[0])
	go f.run(&f.halves[1])
	return f
}

// rawConns takes each socket's raw connection once for the flow, before
// any direction runs: a direction reads by its source's and writes by
// the other's, and the lot waits on its source's. (Asked for per copy
// loop, each was an allocation per direction and loop.) A socket that
// has none (it cannot happen to a *net.TCPConn from net) is left nil,
// and copyConn and park ask again and get the error.
func (f *Flow) rawConns() {
	for i := range f.halves {
		if rc, err := f.halves[i].src.SyscallConn(); err == nil {
			f.halves[i].rc = rc
		}
	}
}

// sink is h's destination's raw connection: the other direction's source.
func (h *half) sink() syscall.RawConn {
	if h == &h.f.halves[0] {
		return h.f.halves[1].rc
	}
	return h.f.halves[0].rc
}

// Flow is a running relay.
type Flow struct {
	conns  [2]*net.TCPConn
	halves [2]half // client to upstream, upstream to client
	done   func(Result)
	// closing is set once the flow is being closed: no direction parks
	// from then on (closeBoth resumes those parked before).
	closing atomic.Bool
	timer   IdleTimer // armed when the flow has an idle timeout
	// ctx, set only for a paced flow (StartLimited), cuts its limiter
	// waits short; cancel is called by closeBoth, stopWatch by finish.
	ctx    context.Context
	cancel context.CancelFunc
	// parent is the caller's context of a paced flow: when it ends the
	// flow was cut, whichever way the copiers noticed (a limiter wait
	// returns its error, a read only sees its socket closed).
	parent    context.Context
	stopWatch func() bool
	// moved is when a paced direction last moved bytes (unix
	// nanoseconds). Data a limiter lets out of the receive queue bit by
	// bit arrived long ago, so the kernel's receive times would call
	// such a flow idle.
	moved atomic.Int64

	mu       sync.Mutex
	up, down int64
	pending  int // directions still running
	err      error
	idle     bool
	finished bool
}

// half is one direction of a flow: src copied to dst, bytes counted into
// *count (under the flow's mu, at its end) and live (as they move).
type half struct {
	f        *Flow
	dst, src *net.TCPConn
	count    *int64
	lim      *rate.Limiter // nil: not paced
	live     *atomic.Int64
	moved    int64 // bytes moved so far, across parkings
	// reg is the direction's registration in the lot while parked (0:
	// not parked), under the lot's mu; inLot says its socket is in the
	// lot's epoll set (parked once), rc is src's raw connection (set
	// when the flow starts, rawConns).
	reg   atomic.Uint64
	inLot bool
	rc    syscall.RawConn
}

// parkAfter is how long a direction's socket stays quiet (between
// parkAfter and twice that) before its goroutine leaves it to the lot. Short enough that a host opening
// tunnels by the thousand holds goroutines only for the newest; long
// enough that a request and its answer (the connection test's whole
// cycle) never park, so a short flow pays nothing for it.
const parkAfter = 100 * time.Millisecond

// maxParkPeriod is the longest park timer of a bulk direction.
const maxParkPeriod = 8 * parkAfter

// smallCopy is the size below which queued bytes are moved with one read
// and one write through a pooled buffer: for a few hundred bytes that is
// cheaper than splice's two calls through a pipe, and bulk data still
// splices. A copy that moved this much is bulk, which lengthens its park
// period.
const smallCopy = 16 << 10

// run copies h.src to h.dst. On EOF it passes the half-close on with
// CloseWrite and leaves the other direction running; on an error it
// closes both connections so the other direction ends too. The direction
// that ends last finishes the flow. An unpaced direction whose source
// has been quiet for parkAfter parks in the lot and this goroutine ends;
// the lot calls run again in a new one when the source is readable.
func (f *Flow) run(h *half) {
	var (
		n     int64
		err   error
		ended bool // this direction is counted out of pending
	)
	defer f.recoverHalf(&ended)
	if h.lim != nil {
		n, err = copyLimited(f.ctx, h.dst, h.src, h.lim, &f.moved, h.live)
		h.moved += n
	} else {
		period := parkAfter
		for {
			if canPark {
				// The read deadline is the park timer: the copy loop's
				// next wait for src ends with os.ErrDeadlineExceeded
				// once it is past. It interrupts no transfer: a read
				// that times out has moved nothing.
				_ = h.src.SetReadDeadline(time.Now().Add(period))
			}
			n, err = copyConn(h)
			h.moved += n
			if !canPark || !errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if n > 0 {
				// Bytes moved since the deadline was set: busy, not
				// quiet (the deadline is absolute). Another period,
				// longer for bulk, so that a long transfer restarts
				// its copy loop about once a second, not ten times.
				if n >= smallCopy {
					period = min(2*period, maxParkPeriod)
				}
				continue
			}
			_ = h.src.SetReadDeadline(time.Time{})
			if f.park(h) {
				return
			}
		}
	}
	if err == nil {
		err = h.dst.CloseWrite()
	}
	if err != nil {
		f.fail(err)
	}
	f.mu.Lock()
	*h.count = h.moved
	f.pending--
	ended = true
	last := f.pending == 0
	f.mu.Unlock()
	if last {
		f.finish()
	}
}

// park leaves h, quiet for a whole parkAfter, to the lot, and reports
// whether it did (the caller's goroutine then ends). Bytes that arrived
// meanwhile make the lot resume h at once.
func (f *Flow) park(h *half) bool {
	if h.rc == nil {
		rc, err := h.src.SyscallConn()
		if err != nil {
			return false
		}
		h.rc = rc
	}
	return theLot.park(h)
}

// Close closes both connections, which ends the flow: done is called,
// from another goroutine, once both directions have seen it. It is how
// the owner of a flow cuts it.
func (f *Flow) Close() { f.closeBoth() }

// recoverHalf, deferred by each direction, turns a panic in it into the
// end of this flow alone: the panic is recorded as the flow's error (over
// any other: it is the one to report), both connections are closed, and
// the direction counts as ended (unless it already was: the panic came
// from finishing) so the flow still finishes once.
func (f *Flow) recoverHalf(ended *bool) {
	p := recover()
	if p == nil {
		return
	}
	f.mu.Lock()
	f.err = &PanicError{Value: p, Stack: debug.Stack()}
	last := false
	if !*ended {
		f.pending--
		last = f.pending == 0
	}
	f.mu.Unlock()
	f.closeBoth()
	if last {
		f.finish()
	}
}

// fail records the first error and closes both connections. Errors caused
// by our own close (net.ErrClosed in the other direction) are not recorded.
func (f *Flow) fail(err error) {
	f.mu.Lock()
	if f.err == nil && !f.idle && !f.finished && !errors.Is(err, net.ErrClosed) {
		f.err = err
	}
	f.mu.Unlock()
	f.closeBoth()
}

func (f *Flow) closeBoth() {
	f.closing.Store(true)
	if f.cancel != nil {
		f.cancel()
	}
	f.conns[0].Close()
	f.conns[1].Close()
	// A parked direction has no goroutine to see the close: resume it in
	// one, which finds its sockets closed and ends as the other does.
	for i := range f.halves {
		if h := &f.halves[i]; theLot.take(h) {
			go f.run(h)
		}
	}
}

func (f *Flow) finish() {
	f.timer.Stop()
	if f.stopWatch != nil {
		f.stopWatch()
	}
	f.closeBoth()
	f.mu.Lock()
	f.finished = true
	if f.err == nil && !f.idle && f.parent != nil && f.parent.Err() != nil {
		f.err = f.parent.Err()
	}
	r := Result{Up: f.up, Down: f.down, Err: f.err, Idle: f.idle}
	f.mu.Unlock()
	f.done(r)
}

// quiet is how long neither socket has received payload, from the kernel's
// own bookkeeping (TCP_INFO), so the unpaced copy loops need not track it;
// for a paced flow, also how long since its copiers last moved bytes.
func (f *Flow) quiet() time.Duration {
	q := min(sinceLastReceive(f.conns[0]), sinceLastReceive(f.conns[1]))
	if t := f.moved.Load(); t != 0 {
		q = min(q, time.Since(time.Unix(0, t)))
	}
	return q
}

func (f *Flow) expire() {
	f.mu.Lock()
	f.idle = !f.finished
	f.mu.Unlock()
	f.closeBoth()
}
