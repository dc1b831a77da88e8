//go:build linux

package udpio

import (
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Datagrams move with recvmmsg(2) and sendmmsg(2): when
// several are queued on a socket, one system call and one wake-up of the
// goroutine move them all. The calls are made here rather than through
// golang.org/x/net/ipv4's ReadBatch/WriteBatch, which allocate a
// *net.UDPAddr for every datagram read and need one for every datagram
// written; this code allocates nothing per datagram.
//
// Reader (here) and Writer (writer_linux.go) are each
// used by one goroutine, and go through the socket's syscall.RawConn so
// that the Go poller still does the waiting (a closed socket ends a
// blocked call, as it does a ReadFrom).
//
// The calls themselves are raw (syscall.RawSyscall6, no entersyscall):
// the socket is non-blocking (every net.UDPConn is), so a call never
// waits; it only works, for a batch up to tens of microseconds (a send
// runs the receiver's network stack on this CPU). Made as a blocking
// system call, such a call outlived the scheduler monitor's 20 µs tick
// often enough that the monitor took the P away and woke another thread
// to run it, and kept itself polling every 20 µs. In the benchmark's
// closed loop (512-byte datagrams, 64 in flight) the monitor alone was a
// fifth of the proxy's CPU samples; raw calls took the proxy from about
// 7 to 5.5 µs of CPU per round trip and from about 190 to 130 voluntary
// context switches per 1000 round trips.

// Reader reads up to BatchSize datagrams per recvmmsg call into
// buffers of its own, each size bytes after room bytes kept free in
// front (see Headroom). It starts with one buffer and
// doubles their number whenever a read fills them all: an association
// that never has more than one datagram queued costs no more memory than
// a ReadFrom loop.
type Reader struct {
	rc    syscall.RawConn
	size  int
	room  int
	bufs  [][]byte
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	zones zoneNames

	n     int   // datagrams the last call read
	err   error // the last call's error
	readF func(fd uintptr) bool
	tryF  func(fd uintptr) bool
}

// NewReader returns a Reader of c whose buffers hold size bytes each.
func NewReader(c *net.UDPConn, size int) (*Reader, error) {
	return NewReaderHeadroom(c, size, 0)
}

// NewReaderHeadroom is NewReader with headroom bytes kept free in front
// of every datagram read (see Headroom).
func NewReaderHeadroom(c *net.UDPConn, size, headroom int) (*Reader, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &Reader{rc: rc, size: size, room: headroom}
	// Bound once: a method value per call would allocate.
	r.readF = r.recvmmsg
	r.tryF = r.tryRecvmmsg
	r.grow(1)
	return r, nil
}

// grow makes room for n datagrams, keeping the buffers it has.
func (r *Reader) grow(n int) {
	for len(r.bufs) < n {
		r.bufs = append(r.bufs, make([]byte, r.room+r.size))
	}
	r.hdrs = make([]unix.Mmsghdr, n)
	r.iovs = make([]unix.Iovec, n)
	r.names = make([]unix.RawSockaddrInet6, n)
	for i := range r.hdrs {
		r.iovs[i].Base = &r.bufs[i][r.room]
		r.iovs[i].SetLen(r.size)
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
	}
}

// Read waits for at least one datagram and reads as many as are queued,
// up to its number of buffers. It returns how many it read; Datagram
// gives them. An error means the socket is closed or broken.
func (r *Reader) Read() (int, error) {
	return r.read(r.readF)
}

// TryRead is Read without the wait: it returns 0 when no datagram is
// queued (see Group).
func (r *Reader) TryRead() (int, error) {
	return r.read(r.tryF)
}

func (r *Reader) read(f func(fd uintptr) bool) (int, error) {
	if r.n == len(r.hdrs) && r.n < BatchSize {
		r.grow(min(2*r.n, BatchSize))
	}
	for i := range r.hdrs {
		r.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		r.hdrs[i].Hdr.Flags = 0
		r.hdrs[i].Len = 0
	}
	r.n, r.err = 0, nil
	if err := r.rc.Read(f); err != nil {
		return 0, err
	}
	return r.n, r.err
}

// recvmmsg is the RawConn callback: false asks the poller to wait.
func (r *Reader) recvmmsg(fd uintptr) bool {
	return r.recv(fd) != syscall.EAGAIN
}

// tryRecvmmsg is the RawConn callback that never waits.
func (r *Reader) tryRecvmmsg(fd uintptr) bool {
	r.recv(fd)
	return true
}

// recv makes one recvmmsg call into r and returns its errno; it keeps
// any error other than EAGAIN in r.err.
func (r *Reader) recv(fd uintptr) syscall.Errno {
	for {
		n, _, e := syscall.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)), 0, 0, 0)
		switch e {
		case 0:
			r.n = int(n)
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
		default:
			r.err = os.NewSyscallError("recvmmsg", e)
		}
		return e
	}
}

// Datagram returns datagram i of the last read: its bytes (valid until
// the next read), its source, and whether the kernel cut it to fit.
func (r *Reader) Datagram(i int) (b []byte, src netip.AddrPort, truncated bool) {
	h := &r.hdrs[i]
	return r.bufs[i][r.room : r.room+int(h.Len)], r.zones.addrPort(&r.names[i]), h.Hdr.Flags&unix.MSG_TRUNC != 0
}

// Headroom returns the n bytes just in front of datagram i (n at most
// the headroom given to NewReader), valid until the next read: a header
// written there and the datagram are one contiguous piece of memory,
// which a Writer sends as one without copying either.
func (r *Reader) Headroom(i, n int) []byte {
	return r.bufs[i][r.room-n : r.room : r.room]
}

// putPort stores p in network byte order into a sockaddr's port field.
func putPort(field *uint16, p uint16) {
	b := (*[2]byte)(unsafe.Pointer(field))
	b[0], b[1] = byte(p>>8), byte(p)
}

func getPort(field *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(field))
	return uint16(b[0])<<8 | uint16(b[1])
}

// zoneNames turns a scope ID into the zone net.UDPConn would give (the
// interface's name), remembering the last one: link-local peers are rare
// and one association sees few interfaces.
type zoneNames struct {
	id   uint32
	zone string
}

func (z *zoneNames) addrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), getPort(&sa4.Port))
	case unix.AF_INET6:
		ip := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			ip = ip.WithZone(z.lookup(sa.Scope_id))
		}
		return netip.AddrPortFrom(ip, getPort(&sa.Port))
	}
	return netip.AddrPort{}
}

func (z *zoneNames) lookup(id uint32) string {
	if id != z.id || z.zone == "" {
		z.id, z.zone = id, zoneName(id)
	}
	return z.zone
}

// zoneIndexes is the reverse, for destinations with a zone.
type zoneIndexes struct {
	zone string
	id   uint32
}

func (z *zoneIndexes) lookup(zone string) uint32 {
	if zone == "" {
		return 0
	}
	if zone != z.zone {
		z.zone, z.id = zone, zoneIndex(zone)
	}
	return z.id
}
