package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, smallCopy); return &b }}

// copyLimited is copyConn paced by lim: once src is readable it takes
// tokens for what is queued (at most a burst), then moves exactly that
// much by the same path as copyConn, splice included. Bytes waiting for
// tokens stay in the socket's receive queue, where TCP flow control slows
// the sender; the relay holds no buffer meanwhile.
func copyLimited(ctx context.Context, dst, src *net.TCPConn, lim *rate.Limiter, moved, live *atomic.Int64) (int64, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	var total int64
	for {
		avail, eof, err := waitReadable(rc)
		if err != nil || eof {
			return total, err
		}
		n := chunk(lim, avail)
		if retry, err := pace(ctx, lim, n); err != nil {
			return total, err
		} else if retry {
			continue
		}
		m, err := move(dst, src, n)
		total += m
		add(live, m)
		if m > 0 {
			moved.Store(time.Now().UnixNano())
		}
		if err != nil {
			return total, err
		}
	}
}

// move copies exactly n bytes that src has queued to dst.
func move(dst, src *net.TCPConn, n int) (int64, error) {
	if n < smallCopy {
		return copySmall(dst, src, n)
	}
	// TCPConn.ReadFrom splices from an *io.LimitedReader of a
	// *net.TCPConn; the pipe is returned when it is done.
	return dst.ReadFrom(&io.LimitedReader{R: src, N: int64(n)})
}

func copySmall(dst, src *net.TCPConn, avail int) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	n, err := src.Read((*bp)[:avail])
	if n > 0 {
		if _, werr := dst.Write((*bp)[:n]); werr != nil {
			return 0, werr
		}
	}
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return int64(n), err
}

// waitReadable parks until the socket has data or has reached EOF, and
// says how many bytes are queued. It uses the runtime poller through
// RawConn.Read, so the wait costs a parked goroutine and nothing else.
func waitReadable(rc syscall.RawConn) (avail int, eof bool, err error) {
	var serr error
	cerr := rc.Read(func(fd uintptr) bool {
		n, e := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if e != nil {
			serr = os.NewSyscallError("ioctl SIOCINQ", e)
			return true
		}
		if n > 0 {
			avail = n
			return true
		}
		// Nothing queued: either nothing has arrived (wait) or the
		// peer has closed (a zero-byte peek says EOF).
		var b [1]byte
		for {
			m, _, e := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return false
			case e != nil:
				serr = os.NewSyscallError("recvfrom", e)
			case m == 0:
				eof = true
			default:
				avail = m // arrived since the ioctl
			}
			return true
		}
	})
	if cerr != nil {
		return 0, false, cerr
	}
	return avail, eof, serr
}
