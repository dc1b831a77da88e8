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
// back as soon as the socket has nothing queued. A tunnel that sits
// idle for hours costs two parked goroutines and its two sockets.
//
// It is part of the ifsocks program, not a public API: exported names
// serve the other packages of this module and change with them.
package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
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
func Start(client, upstream *net.TCPConn, idle time.Duration, cnt Counts, done func(Result)) {
	f := &flow{conns: [2]*net.TCPConn{client, upstream}, done: done, pending: 2}
	if idle > 0 {
		f.timer.start(idle, f)
	}
	go f.half(upstream, client, &f.up, nil, cnt.Up)
	go f.half(client, upstream, &f.down, nil, cnt.Down)
}

type flow struct {
	conns [2]*net.TCPConn
	done  func(Result)
	timer IdleTimer // armed when the flow has an idle timeout
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

// half copies src to dst into *count. On EOF it passes the half-close on
// with CloseWrite and leaves the other direction running; on an error it
// closes both connections so the other direction ends too. The direction
// that ends last finishes the flow.
func (f *flow) half(dst, src *net.TCPConn, count *int64, lim *rate.Limiter, live *atomic.Int64) {
	var (
		n     int64
		err   error
		ended bool // this direction is counted out of pending
	)
	defer f.recoverHalf(&ended)
	if lim == nil {
		n, err = copyConn(dst, src, live)
	} else {
		n, err = copyLimited(f.ctx, dst, src, lim, &f.moved, live)
	}
	if err == nil {
		err = dst.CloseWrite()
	}
	if err != nil {
		f.fail(err)
	}
	f.mu.Lock()
	*count = n
	f.pending--
	ended = true
	last := f.pending == 0
	f.mu.Unlock()
	if last {
		f.finish()
	}
}

// recoverHalf, deferred by each direction, turns a panic in it into the
// end of this flow alone: the panic is recorded as the flow's error (over
// any other: it is the one to report), both connections are closed, and
// the direction counts as ended (unless it already was: the panic came
// from finishing) so the flow still finishes once.
func (f *flow) recoverHalf(ended *bool) {
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
func (f *flow) fail(err error) {
	f.mu.Lock()
	if f.err == nil && !f.idle && !f.finished && !errors.Is(err, net.ErrClosed) {
		f.err = err
	}
	f.mu.Unlock()
	f.closeBoth()
}

func (f *flow) closeBoth() {
	if f.cancel != nil {
		f.cancel()
	}
	f.conns[0].Close()
	f.conns[1].Close()
}

func (f *flow) finish() {
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
func (f *flow) quiet() time.Duration {
	q := min(sinceLastReceive(f.conns[0]), sinceLastReceive(f.conns[1]))
	if t := f.moved.Load(); t != 0 {
		q = min(q, time.Since(time.Unix(0, t)))
	}
	return q
}

func (f *flow) expire() {
	f.mu.Lock()
	f.idle = !f.finished
	f.mu.Unlock()
	f.closeBoth()
}
