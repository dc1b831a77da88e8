//go:build !linux

package udpio

import (
	"errors"
	"net"
	"net/netip"
)

// Outside Linux there is no recvmmsg/sendmmsg: the reader and the writer
// move one datagram per system call, with the same interface as on Linux.

type Reader struct {
	c    *net.UDPConn
	buf  []byte
	room int
	n    int
	src  netip.AddrPort
}

// NewReader returns a Reader of c whose buffers hold size bytes each.
func NewReader(c *net.UDPConn, size int) (*Reader, error) {
	return NewReaderHeadroom(c, size, 0)
}

// NewReaderHeadroom is NewReader with headroom bytes kept free in front
// of every datagram read.
func NewReaderHeadroom(c *net.UDPConn, size, headroom int) (*Reader, error) {
	return &Reader{c: c, buf: make([]byte, headroom+size), room: headroom}, nil
}

func (r *Reader) Read() (int, error) {
	n, src, err := r.c.ReadFromUDPAddrPort(r.buf[r.room:])
	if err != nil {
		return 0, err
	}
	r.n, r.src = n, src
	return 1, nil
}

// Datagram reports truncation as a datagram that filled the buffer; the
// callers' buffers are one byte larger than anything they accept.
func (r *Reader) Datagram(int) ([]byte, netip.AddrPort, bool) {
	return r.buf[r.room : r.room+r.n], r.src, false
}

// Headroom returns the n bytes just in front of the datagram.
func (r *Reader) Headroom(_, n int) []byte { return r.buf[r.room-n : r.room : r.room] }

type Writer struct {
	c       *net.UDPConn
	scratch []byte
	heads   [BatchSize][]byte
	bodies  [BatchSize][]byte
	dsts    [BatchSize]netip.AddrPort
	sent    [BatchSize]bool
	n       int
}

// NewWriter returns a Writer to c.
func NewWriter(c *net.UDPConn) (*Writer, error) { return &Writer{c: c}, nil }

// DropWhenFull does nothing here: without a Group each socket has a
// goroutine of its own, which may wait.
func (w *Writer) DropWhenFull() {}

func (w *Writer) Add(head, payload []byte, to netip.AddrPort) bool {
	if w.n == BatchSize {
		return false
	}
	w.heads[w.n], w.bodies[w.n], w.dsts[w.n], w.sent[w.n] = head, payload, to, false
	w.n++
	return true
}

func (w *Writer) Flush() {
	for i := range w.n {
		b := w.bodies[i]
		if len(w.heads[i]) > 0 {
			w.scratch = append(append(w.scratch[:0], w.heads[i]...), b...)
			b = w.scratch
		}
		_, err := w.c.WriteToUDPAddrPort(b, w.dsts[i])
		w.sent[i] = err == nil
	}
}

// Len is the number of datagrams queued.
func (w *Writer) Len() int { return w.n }

func (w *Writer) Result(i int) (int, netip.AddrPort, bool) {
	return len(w.bodies[i]), w.dsts[i], w.sent[i]
}

// Reset empties the batch.
func (w *Writer) Reset() { w.n = 0 }

// Group needs epoll: outside Linux NewGroup fails, and each socket is
// served by a goroutine of its own calling Read.
type Group struct{}

// NewGroup fails with errors.ErrUnsupported outside Linux.
func NewGroup(...*Reader) (*Group, error) { return nil, errors.ErrUnsupported }

func (*Group) Serve(func(i, n int)) error { return errors.ErrUnsupported }

func (*Group) Close() error { return nil }
