package relay

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// pipeSize is the capacity asked for each splice pipe, and so the most one
// splice call moves: the default fs.pipe-max-size, which an unprivileged
// process may use, and what Go's own splice asks for. Where the per-user
// pipe budget refuses it the pipe keeps the 64 KiB default and still
// works, only with more calls: on one stream of the benchmark's path that
// cost the proxy about twice the CPU per GB (1.2 s against 0.6 s; 256 KiB
// cost 0.95 s).
const pipeSize = 1 << 20

// copyConn copies src to dst until EOF (returned as nil) or an error.
//
// While a flow carries requests and replies, each burst is one read of up
// to smallCopy bytes through a pooled buffer, taken only once src is
// readable and returned before the copy parks again, and one write. A read
// that fills the buffer means bulk data is queued: the rest of the burst
// goes by splice(2) through a pooled pipe for as long as data keeps
// arriving, and the pipe goes back the moment src has nothing queued.
// From then on the flow counts as bulk and waits by splice, as Go's own
// splice does: a splice that finds src empty gives the pipe back and
// parks, and the wake-up splices at once (with a pipe taken anew), so bulk
// bytes never pass through the buffer and a wake-up costs no call to ask
// how much is queued. A wake-up that finds less than smallCopy queued
// makes the flow interactive again.
func copyConn(h *half) (int64, error) {
	dst, live := h.dst, h.live
	rc, wc := h.rc, h.sink()
	if rc == nil || wc == nil {
		// Only a socket without a raw connection (rawConns): the
		// error says why.
		if _, err := h.src.SyscallConn(); err != nil {
			return 0, err
		}
		if _, err := dst.SyscallConn(); err != nil {
			return 0, err
		}
		return 0, errors.New("relay: no raw connection")
	}
	var total int64
	bulk := false
	for {
		if !bulk {
			n, err := copyBurstStart(dst, rc)
			total += int64(n)
			add(live, int64(n))
			if err != nil || n == 0 { // n == 0: EOF
				return total, err
			}
			if n < smallCopy {
				continue
			}
		}
		m, eof, err := spliceBurst(wc, rc, live, bulk)
		total += m
		if errors.Is(err, errNoPipe) {
			// Out of descriptors: go on through the buffer.
			bulk = false
			continue
		}
		if err != nil || eof {
			return total, err
		}
		// A burst the buffer began found src empty: the flow is bulk
		// now. A bulk flow's burst ended at a small wake-up: it is
		// interactive again.
		bulk = !bulk
	}
}

// copyBurstStart waits until src is readable, reads up to smallCopy bytes
// and writes them to dst. It returns 0 and no error at EOF.
func copyBurstStart(dst *net.TCPConn, rc syscall.RawConn) (int, error) {
	b := burstReads.Get().(*burstRead)
	defer burstReads.Put(b)
	cerr := rc.Read(b.fn)
	bp, n, serr := b.bp, b.n, b.err
	b.bp, b.n, b.err = nil, 0, nil
	if bp != nil {
		defer bufPool.Put(bp)
	}
	switch {
	case cerr != nil:
		return 0, cerr
	case serr != nil:
		return 0, os.NewSyscallError("read", serr)
	case n > 0:
		if _, err := dst.Write((*bp)[:n]); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// burstRead is one read of copyBurstStart: the function the poller calls
// when the socket is readable, and what it read. It is pooled with its
// function, made once: a closure over copyBurstStart's locals cost an
// allocation for itself and one for each local it set, at every read.
type burstRead struct {
	bp  *[]byte // the buffer read into; nil when nothing was read
	n   int
	err error
	fn  func(fd uintptr) bool // b.read
}

var burstReads = sync.Pool{New: func() any {
	b := new(burstRead)
	b.fn = b.read
	return b
}}

// read reads what fd has queued into a pooled buffer, taken only now
// that the socket is readable; it reports false (wait) when nothing is
// queued, having given the buffer back.
func (b *burstRead) read(fd uintptr) bool {
	b.bp = bufPool.Get().(*[]byte)
	for {
		b.n, b.err = unix.Read(int(fd), *b.bp)
		if b.err != unix.EINTR {
			break
		}
	}
	if b.err == unix.EAGAIN {
		// Nothing queued: give the buffer back before parking.
		bufPool.Put(b.bp)
		b.bp, b.n, b.err = nil, 0, nil
		return false
	}
	return true
}

// spliceBurst moves src to dst through a pooled pipe until EOF (eof
// true), an error, or:
//   - without wait (a burst the buffer began), src has nothing queued;
//   - with wait (a bulk flow), a wake-up finds less than smallCopy queued.
//     Meanwhile it parks whenever src is empty, holding no pipe.
//
// Without a pipe (descriptor limit) it says so with errNoPipe. Each splice
// out is added to live as it completes: a bulk burst can last as long as
// the transfer.
func spliceBurst(dst, src syscall.RawConn, live *atomic.Int64, wait bool) (moved int64, eof bool, err error) {
	var p *pipe
	for {
		n, drained, waited, err := spliceIn(src, &p, wait)
		if err != nil {
			if p != nil {
				p.put() // a failed splice moved nothing into it
			}
			return moved, false, err
		}
		if drained || n == 0 {
			p.put()
			return moved, !drained, nil
		}
		m, err := spliceOut(dst, p, n)
		moved += int64(m)
		add(live, int64(m))
		if err != nil {
			// Bytes may be left in the pipe: it must not be reused.
			p.close()
			return moved, false, err
		}
		if waited && n < smallCopy {
			p.put()
			return moved, false, nil
		}
	}
}

// spliceIn moves what src has queued, up to the pipe's size, into the
// empty pipe *pp, taking one from the pool first if *pp is nil. n == 0 is
// EOF unless drained. Because the pipe starts empty, EAGAIN can only mean
// the socket is empty: without wait that is drained; with wait the pipe
// goes back to the pool (*pp nil), the call parks until src is readable
// (waited) and tries again with a pipe taken anew.
func spliceIn(src syscall.RawConn, pp **pipe, wait bool) (n int, drained, waited bool, err error) {
	var serr error
	cerr := src.Read(func(fd uintptr) bool {
		if *pp == nil {
			if *pp, serr = getPipe(); serr != nil {
				*pp, serr = nil, errNoPipe
				return true
			}
		}
		for {
			var m int64
			m, serr = unix.Splice(int(fd), nil, (*pp).w, nil, pipeSize, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			n = int(m)
			if serr != unix.EINTR {
				break
			}
		}
		if serr == unix.EAGAIN {
			if wait {
				(*pp).put()
				*pp = nil
				waited = true
				return false
			}
			n, serr, drained = 0, nil, true
		}
		return true
	})
	switch {
	case cerr != nil:
		return 0, false, waited, cerr
	case serr == errNoPipe:
		return 0, false, waited, serr
	case serr != nil:
		return 0, false, waited, os.NewSyscallError("splice", serr)
	}
	return n, drained, waited, nil
}

// spliceOut moves the n bytes in p to dst, parking while dst's send buffer
// is full.
func spliceOut(dst syscall.RawConn, p *pipe, n int) (int, error) {
	var (
		done int
		serr error
	)
	cerr := dst.Write(func(fd uintptr) bool {
		for done < n {
			m, e := unix.Splice(p.r, nil, int(fd), nil, n-done, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return false
			case e != nil:
				serr = os.NewSyscallError("splice", e)
				return true
			case m == 0:
				serr = errShortSplice
				return true
			}
			done += int(m)
		}
		return true
	})
	if cerr != nil {
		return done, cerr
	}
	return done, serr
}

var (
	errShortSplice = errors.New("splice moved no bytes to the socket")
	errNoPipe      = errors.New("no pipe for splice")
)

// pipe is a kernel pipe used as the buffer of splice bursts. Pooled pipes
// are empty; one whose burst failed is closed instead.
type pipe struct {
	r, w    int
	cleanup runtime.Cleanup
}

// pipePool holds empty pipes. sync.Pool drops items at GC without closing
// them, so each pipe carries a cleanup that closes its descriptors then.
var pipePool sync.Pool

func getPipe() (*pipe, error) {
	if p, ok := pipePool.Get().(*pipe); ok {
		return p, nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	// Best effort: see pipeSize.
	_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	p := &pipe{r: fds[0], w: fds[1]}
	p.cleanup = runtime.AddCleanup(p, closePipe, fds)
	return p, nil
}

func (p *pipe) put() { pipePool.Put(p) }

func (p *pipe) close() {
	p.cleanup.Stop()
	closePipe([2]int{p.r, p.w})
}

func closePipe(fds [2]int) {
	unix.Close(fds[0])
	unix.Close(fds[1])
}
