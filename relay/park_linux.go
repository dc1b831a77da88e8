package relay

import (
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// canPark: on Linux a quiet direction leaves its goroutine for the lot.
const canPark = true

// lot waits for the sockets of quiet directions, so that an idle tunnel
// holds no goroutine (no stack, no g): one epoll instance for the whole
// process, itself waited on through the runtime poller by one goroutine
// that runs only while some direction is parked. A socket is registered
// one-shot: when it becomes readable (data, EOF or an error) its direction
// is taken out of the lot and goes on in a new goroutine.
type lot struct {
	once sync.Once
	ep   *os.File // the epoll descriptor, in the runtime poller
	err  error

	mu      sync.Mutex
	parked  map[uint64]*half // by registration
	next    uint64
	running bool // the dispatch goroutine
	broken  bool // the dispatcher failed: directions wait themselves
}

var theLot lot

func (l *lot) init() error {
	l.once.Do(func() {
		fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			l.err = os.NewSyscallError("epoll_create1", err)
			return
		}
		// Non-blocking, so os.NewFile puts it in the runtime poller:
		// the dispatcher parks like any socket reader, no thread held.
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			l.err = os.NewSyscallError("fcntl", err)
			return
		}
		l.ep = os.NewFile(uintptr(fd), "relay-lot")
		l.parked = make(map[uint64]*half)
	})
	return l.err
}

// park registers h's source socket and reports true: h's goroutine may
// end, the lot resumes h when the socket is readable. It reports false
// when h must go on waiting itself: the flow is closing, or the lot or
// the registration failed (then the next read shows why, or waits).
func (l *lot) park(h *half) bool {
	if l.init() != nil {
		return false
	}
	l.mu.Lock()
	if l.broken {
		l.mu.Unlock()
		return false
	}
	l.next++
	id := l.next
	l.parked[id] = h
	// Stored before closing is read, as closeBoth stores closing before
	// it reads reg: one of the two sees the other, so a direction parked
	// while the flow closes is either not parked or resumed by closeBoth.
	h.reg.Store(id)
	if h.f.closing.Load() {
		delete(l.parked, id)
		h.reg.Store(0)
		l.mu.Unlock()
		return false
	}
	start := !l.running
	l.running = true
	op := unix.EPOLL_CTL_ADD
	if h.inLot {
		op = unix.EPOLL_CTL_MOD // re-arm: one-shot leaves it in the set, disabled
	}
	// Set before the registration, after which h may resume at once in
	// another goroutine: nothing of h is written past it.
	h.inLot = true
	l.mu.Unlock()
	if start {
		go l.dispatch()
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	var serr error
	cerr := h.rc.Control(func(fd uintptr) {
		serr = unix.EpollCtl(int(l.ep.Fd()), op, int(fd), &ev)
	})
	if cerr == nil && serr == nil {
		return true
	}
	// Closed meanwhile, or refused: take h back unless closeBoth (which
	// then resumes it) already has.
	if l.take(h) {
		h.inLot = false
		return false
	}
	return true
}

// take removes h from the lot and reports whether it was there: the one
// who takes a parked direction resumes it.
func (l *lot) take(h *half) bool {
	if h.reg.Load() == 0 {
		return false // never parked, or resumed: no lock for every flow's end
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	id := h.reg.Load()
	if id == 0 {
		return false
	}
	delete(l.parked, id)
	h.reg.Store(0)
	if len(l.parked) == 0 && l.ep != nil {
		// Wake the dispatcher so that it ends: nothing to wait for.
		_ = l.ep.SetReadDeadline(time.Now())
	}
	return true
}

// dispatch resumes the directions whose sockets became readable, until
// no direction is parked.
func (l *lot) dispatch() {
	rc, err := l.ep.SyscallConn()
	l.mu.Lock()
	if len(l.parked) == 0 && err == nil {
		// Emptied before this dispatcher started.
		l.running = false
		l.mu.Unlock()
		return
	}
	// A deadline set by a take that emptied the lot before this
	// dispatcher started must not end it at once.
	_ = l.ep.SetReadDeadline(time.Time{})
	l.broken = l.broken || err != nil
	l.mu.Unlock()
	if err != nil {
		l.stopAll()
		return
	}
	var evs [64]unix.EpollEvent
	for {
		var n int
		err := rc.Read(func(fd uintptr) bool {
			var e error
			for {
				n, e = unix.EpollWait(int(fd), evs[:], 0)
				if e != unix.EINTR {
					break
				}
			}
			return e != nil || n > 0
		})
		for _, ev := range evs[:max(n, 0)] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if h := l.takeHalf(id); h != nil {
				go h.f.run(h)
			}
		}
		failed := err != nil && !os.IsTimeout(err)
		l.mu.Lock()
		if len(l.parked) == 0 || failed {
			l.running = false
			l.broken = l.broken || failed
			l.mu.Unlock()
			if failed {
				l.stopAll()
			}
			return
		}
		if err != nil {
			// Woken by take when the lot emptied, and parked again
			// since: wait on. Under mu, so a take that empties the lot
			// after this sets the deadline again.
			_ = l.ep.SetReadDeadline(time.Time{})
		}
		l.mu.Unlock()
	}
}

func (l *lot) takeHalf(id uint64) *half {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.parked[id]
	if h != nil {
		delete(l.parked, id)
		h.reg.Store(0)
	}
	return h
}

// stopAll resumes every parked direction: the lot can no longer wait for
// them (it cannot fail on Linux short of a bug), so they wait themselves.
func (l *lot) stopAll() {
	l.mu.Lock()
	hs := make([]*half, 0, len(l.parked))
	for id, h := range l.parked {
		delete(l.parked, id)
		h.reg.Store(0)
		hs = append(hs, h)
	}
	l.mu.Unlock()
	for _, h := range hs {
		go h.f.run(h)
	}
}
