//go:build linux

package udpio

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Group lets one goroutine serve several sockets (a UDP association's
// client-facing socket and its outbound ones): it waits until any of
// them has datagrams queued and reads from those that have.
//
// With one goroutine per socket, a datagram relayed one way wakes one
// goroutine and its reply wakes the other; when both became runnable at
// once, the scheduler woke a second thread to run the second one on
// the other core, and each of them then parked and slept again. In the
// benchmark's closed loop (two cores shared with the client and the echo
// server) that was most of the relay's context switches and futex
// wake-ups. One goroutine with one wait parks once for both directions.
//
// The wait is an epoll instance of the group's own, holding the sockets
// (level-triggered): the Go poller watches that instance, which turns
// readable whenever one of them has a datagram queued, so the goroutine
// parks in the poller as it does on a socket (no thread is held while it
// waits, and closing the group wakes it). Once awake it asks the
// instance, without waiting, which sockets are readable, and reads only
// those.
type Group struct {
	ep      *os.File // the epoll instance
	rc      syscall.RawConn
	readers []*Reader
	events  []unix.EpollEvent
	handle  func(i, n int)
	err     error
	waitF   func(fd uintptr) bool

	// Closing an os.File waits until no call is using it, and Serve
	// uses the instance for as long as it runs: so Close only stops
	// Serve (stop, and a read deadline to wake it), and Serve closes
	// the instance as it returns. mu orders Close against the start
	// of Serve.
	mu      sync.Mutex
	closed  bool
	serving bool
	stop    atomic.Bool
}

// NewGroup returns a Group of the readers' sockets. Each reader is then
// read only through the group. It fails when the epoll instance cannot
// be made (out of descriptors).
func NewGroup(readers ...*Reader) (*Group, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	// Non-blocking, so that os.NewFile hands it to the Go poller.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	g := &Group{ep: os.NewFile(uintptr(fd), "udpio-group"), readers: readers, events: make([]unix.EpollEvent, len(readers))}
	for i, r := range readers {
		var cerr error
		if err := r.rc.Control(func(s uintptr) {
			ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(i)}
			cerr = unix.EpollCtl(fd, unix.EPOLL_CTL_ADD, int(s), &ev)
		}); err != nil {
			g.ep.Close()
			return nil, err
		}
		if cerr != nil {
			g.ep.Close()
			return nil, os.NewSyscallError("epoll_ctl", cerr)
		}
	}
	if g.rc, err = g.ep.SyscallConn(); err != nil {
		g.ep.Close()
		return nil, err
	}
	g.waitF = g.serve
	return g, nil
}

// Serve reads every batch of datagrams that arrives on the group's
// sockets and calls handle(i, n) for the n datagrams read by readers[i],
// one call at a time, until a socket fails or the group is closed. It
// returns that error.
func (g *Group) Serve(handle func(i, n int)) error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return os.ErrClosed
	}
	g.serving = true
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.closed, g.serving = true, false
		g.mu.Unlock()
		g.ep.Close()
	}()
	g.handle, g.err = handle, nil
	// One call for the group's life: the poller's readiness is reset
	// only when a call starts, so none is lost between batches.
	if err := g.rc.Read(g.waitF); err != nil {
		if g.stop.Load() {
			return os.ErrClosed
		}
		return err
	}
	return g.err
}

// serve is the RawConn callback: false parks until the epoll instance is
// readable again.
func (g *Group) serve(fd uintptr) bool {
	for {
		if g.stop.Load() {
			// Close was called while datagrams kept coming: the
			// goroutine would never park to see the deadline.
			g.err = os.ErrClosed
			return true
		}
		n, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, fd, uintptr(unsafe.Pointer(&g.events[0])), uintptr(len(g.events)), 0, 0, 0)
		switch e {
		case 0:
		case syscall.EINTR:
			continue
		default:
			g.err = os.NewSyscallError("epoll_pwait", e)
			return true
		}
		if n == 0 {
			return false
		}
		for _, ev := range g.events[:n] {
			k, err := g.readers[ev.Fd].TryRead()
			if err != nil {
				g.err = err
				return true
			}
			if k > 0 {
				g.handle(int(ev.Fd), k)
			}
		}
	}
}

// Close ends Serve (within its current batch) and closes the epoll
// instance; it does not close the sockets, and it does not wait.
func (g *Group) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	if !g.serving {
		return g.ep.Close()
	}
	// Serve closes the instance as it returns.
	g.stop.Store(true)
	return g.ep.SetReadDeadline(time.Unix(1, 0))
}
