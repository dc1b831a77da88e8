// Package relay moves bytes between two TCP connections for the life of a
// flow: both directions at once, half-close passed through, an idle
// timeout, and byte counts.
//
// It copies between the concrete *net.TCPConn values with io.Copy so that
// Go uses splice(2) on Linux: the payload moves inside the kernel and never
// through a user-space buffer. Wrapping either connection (to count bytes or
// to refresh deadlines) would silently turn that off, which is why idle time
// is read from the kernel (TCP_INFO) instead of being tracked per read.
package relay

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

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

// TCP relays between client and upstream until both directions have ended,
// one fails, or neither has received data for idle (0 disables the idle
// timeout). Both connections are closed when it returns.
func TCP(client, upstream *net.TCPConn, idle time.Duration) Result {
	f := &flow{conns: [2]*net.TCPConn{client, upstream}}
	var it *IdleTimer
	if idle > 0 {
		it = StartIdleTimer(idle, f.quiet, f.expire)
	}
	downc := make(chan int64, 1)
	go func() {
		downc <- f.half(client, upstream)
	}()
	up := f.half(upstream, client)
	down := <-downc
	if it != nil {
		it.Stop()
	}
	f.finish()
	f.mu.Lock()
	defer f.mu.Unlock()
	return Result{Up: up, Down: down, Err: f.err, Idle: f.idle}
}

type flow struct {
	conns [2]*net.TCPConn

	mu   sync.Mutex
	err  error
	idle bool
	done bool
}

// half copies src to dst. On EOF it passes the half-close on with
// CloseWrite and leaves the other direction running; on an error it closes
// both connections so the other direction ends too.
func (f *flow) half(dst, src *net.TCPConn) int64 {
	n, err := io.Copy(dst, src)
	if err == nil {
		err = dst.CloseWrite()
		if err == nil {
			return n
		}
	}
	f.fail(err)
	return n
}

// fail records the first error and closes both connections. Errors caused
// by our own close (net.ErrClosed in the other direction) are not recorded.
func (f *flow) fail(err error) {
	f.mu.Lock()
	if f.err == nil && !f.idle && !f.done && !errors.Is(err, net.ErrClosed) {
		f.err = err
	}
	f.mu.Unlock()
	f.closeBoth()
}

func (f *flow) closeBoth() {
	f.conns[0].Close()
	f.conns[1].Close()
}

func (f *flow) finish() {
	f.mu.Lock()
	f.done = true
	f.mu.Unlock()
	f.closeBoth()
}

// quiet is how long neither socket has received payload, from the kernel's
// own bookkeeping (TCP_INFO), so the copy loops need not track it.
func (f *flow) quiet() time.Duration {
	return min(sinceLastReceive(f.conns[0]), sinceLastReceive(f.conns[1]))
}

func (f *flow) expire() {
	f.mu.Lock()
	f.idle = !f.done
	f.mu.Unlock()
	f.closeBoth()
}
