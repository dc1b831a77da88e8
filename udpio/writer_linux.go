//go:build linux

package udpio

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UDP generic segmentation offload (UDP_SEGMENT, Linux 4.18): datagrams of
// one size to one destination go down the stack as one buffer that is cut
// into datagrams only at the device (or by the NIC), so routing, netfilter
// and the device's transmit are paid once per group instead of once per
// datagram. The receiver sees ordinary datagrams.
const (
	gsoMaxSegments = 64 // UDP_MAX_SEGMENTS in the kernel
	// gsoMaxBytes bounds a group: the whole must fit one IP packet's
	// 16-bit length before it is cut.
	gsoMaxBytes = 65000
)

// Writer sends up to BatchSize queued datagrams per sendmmsg call,
// consecutive ones of the same size to the same destination as one GSO
// message. A datagram is a header (may be empty) and a payload, neither
// copied: one iovec when the header is empty or lies just in front of
// the payload in memory (Reader.Headroom), else two.
type Writer struct {
	rc    syscall.RawConn
	inet6 bool // an AF_INET6 socket: IPv4 destinations go as IPv4-mapped
	zones zoneIndexes

	// Per queued datagram: its first iovec (iov0; datagram i's are
	// iov0[i] to iov0[i+1]-1, and consecutive datagrams' iovecs are
	// contiguous, so a group is one slice of them), its size, the
	// address it goes to (name: the index of the names entry holding it,
	// shared by consecutive datagrams to one place), payload length,
	// destination and, after flush, whether it went.
	iovs     []unix.Iovec
	iov0     []int
	sizes    []int
	name     []int
	names    []unix.RawSockaddrInet6
	namelens []uint32
	lens     []int
	dsts     []netip.AddrPort
	sent     []bool
	n        int

	// The messages of one sendmmsg call; message m carries datagrams
	// first[m] to first[m+1]-1, with a UDP_SEGMENT control message in
	// cmsgs when it is more than one.
	msgs  []unix.Mmsghdr
	first []int
	cmsgs []byte
	nmsg  int

	// gso is whether GSO is used at all; gsoMax is the largest datagram
	// it is still tried with (the kernel refuses segments that do not
	// fit the route's MTU, and a device without checksum offload
	// refuses GSO outright).
	gso    bool
	gsoMax int

	off    int // the first message the next sendmmsg call sends
	errno  syscall.Errno
	writeF func(fd uintptr) bool
	// noWait: a full send buffer ends the flush instead of waiting
	// for room (see DropWhenFull).
	noWait bool
}

var gsoCmsgSpace = unix.CmsgSpace(2)

// NewWriter returns a Writer to c.
func NewWriter(c *net.UDPConn) (*Writer, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var domain int
	var serr, gsoErr error
	if err := rc.Control(func(fd uintptr) {
		domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		// Kernels without UDP_SEGMENT do not know the option.
		_, gsoErr = unix.GetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, os.NewSyscallError("getsockopt SO_DOMAIN", serr)
	}
	w := &Writer{
		rc:       rc,
		inet6:    domain == unix.AF_INET6,
		iovs:     make([]unix.Iovec, 2*BatchSize),
		iov0:     make([]int, BatchSize+1),
		sizes:    make([]int, BatchSize),
		name:     make([]int, BatchSize),
		names:    make([]unix.RawSockaddrInet6, BatchSize),
		namelens: make([]uint32, BatchSize),
		lens:     make([]int, BatchSize),
		dsts:     make([]netip.AddrPort, BatchSize),
		sent:     make([]bool, BatchSize),
		msgs:     make([]unix.Mmsghdr, BatchSize),
		first:    make([]int, BatchSize+1),
		cmsgs:    make([]byte, BatchSize*gsoCmsgSpace),
		gso:      gsoErr == nil,
		gsoMax:   gsoMaxBytes,
	}
	w.writeF = w.sendmmsg
	return w, nil
}

// Add queues head+payload for to; both must stay unchanged until Flush.
// It returns false, queuing nothing, when the batch is full or to cannot
// be sent from this socket (an IPv6 address on an IPv4 socket).
func (w *Writer) Add(head, payload []byte, to netip.AddrPort) bool {
	if w.n == BatchSize {
		return false
	}
	i := w.n
	if i > 0 && to == w.dsts[i-1] {
		w.name[i] = w.name[i-1] // the same sockaddr, not converted again
	} else {
		namelen, ok := w.putSockaddr(&w.names[i], to)
		if !ok {
			return false
		}
		w.name[i], w.namelens[i] = i, namelen
	}
	v := w.iov0[i]
	switch {
	case len(head) == 0:
		setIovec(&w.iovs[v], payload)
		v++
	case len(payload) == 0 || adjacent(head, payload):
		// One iovec over both: only its start and length are kept.
		w.iovs[v].Base = &head[0]
		w.iovs[v].SetLen(len(head) + len(payload))
		v++
	default:
		setIovec(&w.iovs[v], head)
		setIovec(&w.iovs[v+1], payload)
		v += 2
	}
	w.iov0[i+1] = v
	w.sizes[i] = len(head) + len(payload)
	w.lens[i], w.dsts[i], w.sent[i] = len(payload), to, false
	w.n++
	return true
}

// adjacent reports whether payload (not empty) starts right where head
// ends. Addresses are compared as numbers: a pointer one past head may
// not be formed.
func adjacent(head, payload []byte) bool {
	return uintptr(unsafe.Pointer(&head[0]))+uintptr(len(head)) == uintptr(unsafe.Pointer(&payload[0]))
}

func setIovec(v *unix.Iovec, b []byte) {
	v.Base = nil
	if len(b) > 0 {
		v.Base = &b[0]
	}
	v.SetLen(len(b))
}

func (w *Writer) size(i int) int { return w.sizes[i] }

// DropWhenFull makes Flush leave unsent what does not fit the socket's
// send buffer instead of waiting for room. A goroutine that serves
// several sockets (Group) must not wait on one: traffic the other way
// would wait with it. UDP has no flow control, so this is what a router
// does with a full queue; Result reports the datagrams dropped.
func (w *Writer) DropWhenFull() { w.noWait = true }

// Flush sends what is queued. Afterwards Result(i) tells, for each i <
// Len(), whether datagram i was sent; Reset empties the batch.
func (w *Writer) Flush() {
	from, gso := 0, w.gso
	for from < w.n {
		w.build(from, gso)
		from = w.n
		for w.off = 0; w.off < w.nmsg; {
			w.errno = 0
			if err := w.rc.Write(w.writeF); err != nil {
				return // the socket is closed: the rest stay unsent
			}
			if w.errno == 0 {
				continue
			}
			if w.errno == syscall.EAGAIN {
				return // the send buffer is full (DropWhenFull): the rest stay unsent
			}
			// sendmmsg fails only when the first message of the call
			// cannot go.
			first, next := w.first[w.off], w.first[w.off+1]
			if next-first == 1 {
				w.off++ // that datagram is dropped; the call resumes after it
				continue
			}
			// A group failed: learn what GSO cannot do here, and send
			// the rest of the batch one datagram per message.
			switch {
			case errors.Is(w.errno, unix.EIO):
				w.gso = false // no checksum offload on the route's device
			case errors.Is(w.errno, unix.EINVAL), errors.Is(w.errno, unix.EMSGSIZE):
				w.gsoMax = min(w.gsoMax, w.size(first)-1) // over the MTU
			}
			from, gso = first, false
			break
		}
	}
}

// build lays out the messages for datagrams from..n-1, grouping them for
// GSO when gso is set.
func (w *Writer) build(from int, gso bool) {
	m := 0
	for i := from; i < w.n; m++ {
		j := i + 1
		size := w.size(i)
		if gso && size > 0 && size <= w.gsoMax {
			// Datagrams of the same size to the same place join the
			// group; one shorter datagram may end it.
			total := size
			for j < w.n && j-i < gsoMaxSegments && w.dsts[j] == w.dsts[i] {
				s := w.size(j)
				if s == 0 || s > size || total+s > gsoMaxBytes {
					break
				}
				total += s
				j++
				if s < size {
					break
				}
			}
		}
		h := &w.msgs[m].Hdr
		h.Name = (*byte)(unsafe.Pointer(&w.names[w.name[i]]))
		h.Namelen = w.namelens[w.name[i]]
		h.Iov = &w.iovs[w.iov0[i]]
		h.SetIovlen(w.iov0[j] - w.iov0[i])
		h.Control, h.Controllen = nil, 0
		if j-i > 1 {
			c := w.cmsgs[m*gsoCmsgSpace : (m+1)*gsoCmsgSpace]
			ch := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
			ch.Level, ch.Type = unix.SOL_UDP, unix.UDP_SEGMENT
			ch.SetLen(unix.CmsgLen(2))
			*(*uint16)(unsafe.Pointer(&c[unix.CmsgLen(0)])) = uint16(size)
			h.Control = &c[0]
			h.SetControllen(gsoCmsgSpace)
		}
		w.first[m] = i
		i = j
	}
	w.first[m] = w.n
	w.nmsg = m
}

// sendmmsg is the RawConn callback: false asks the poller to wait.
func (w *Writer) sendmmsg(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.msgs[w.off])), uintptr(w.nmsg-w.off), 0, 0, 0)
		switch e {
		case 0:
			for i := w.first[w.off]; i < w.first[w.off+int(n)]; i++ {
				w.sent[i] = true
			}
			w.off += int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if w.noWait {
				w.errno = e
				return true
			}
			return false
		default:
			w.errno = e
			return true
		}
	}
}

// Len is the number of datagrams queued.
func (w *Writer) Len() int { return w.n }

// Result is datagram i's payload length, destination and whether it was
// sent by the last flush.
func (w *Writer) Result(i int) (int, netip.AddrPort, bool) {
	return w.lens[i], w.dsts[i], w.sent[i]
}

// Reset empties the batch.
func (w *Writer) Reset() { w.n = 0 }

// putSockaddr writes to as the socket's kind of address and returns its
// length.
func (w *Writer) putSockaddr(sa *unix.RawSockaddrInet6, to netip.AddrPort) (uint32, bool) {
	ip := to.Addr()
	if !w.inet6 {
		ip = ip.Unmap()
		if !ip.Is4() {
			return 0, false
		}
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ip.As4()}
		putPort(&sa4.Port, to.Port())
		return unix.SizeofSockaddrInet4, true
	}
	if !ip.IsValid() {
		return 0, false
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ip.As16(), Scope_id: w.zones.lookup(ip.Zone())}
	putPort(&sa.Port, to.Port())
	return unix.SizeofSockaddrInet6, true
}
