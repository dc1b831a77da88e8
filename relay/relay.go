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
	if idle > 0 {
		f.startIdleTimer(idle)
	}
	downc := make(chan int64, 1)
	go func() {
		downc <- f.half(client, upstream)
	}()
	up := f.half(upstream, client)
	down := <-downc
	f.finish()
	return Result{Up: up, Down: down, Err: f.err, Idle: f.idle}
}

type flow struct {
	conns [2]*net.TCPConn

	mu    sync.Mutex
	err   error
	idle  bool
	done  bool
	timer *time.Timer
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
	if f.timer != nil {
		f.timer.Stop()
	}
	f.mu.Unlock()
	f.closeBoth()
}

// startIdleTimer arms a timer that, when it fires, asks the kernel how long
// ago each socket last received data and either ends the flow or re-arms
// for the remaining time. No goroutine waits while the flow is busy.
func (f *flow) startIdleTimer(idle time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.timer = time.AfterFunc(idle, func() { f.checkIdle(idle) })
}

func (f *flow) checkIdle(idle time.Duration) {
	quiet := min(sinceLastReceive(f.conns[0]), sinceLastReceive(f.conns[1]))
	f.mu.Lock()
	if f.done {
		f.mu.Unlock()
		return
	}
	if quiet < idle {
		f.timer.Reset(idle - quiet)
		f.mu.Unlock()
		return
	}
	f.idle = true
	f.mu.Unlock()
	f.closeBoth()
}
