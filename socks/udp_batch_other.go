//go:build !linux

package socks

import (
	"net"
	"net/netip"
)

// Outside Linux there is no recvmmsg/sendmmsg: the reader and the writer
// move one datagram per system call, with the same interface as on Linux.

type udpReader struct {
	c   *net.UDPConn
	buf []byte
	n   int
	src netip.AddrPort
}

func newUDPReader(c *net.UDPConn, size int) (*udpReader, error) {
	return &udpReader{c: c, buf: make([]byte, size)}, nil
}

func (r *udpReader) read() (int, error) {
	n, src, err := r.c.ReadFromUDPAddrPort(r.buf)
	if err != nil {
		return 0, err
	}
	r.n, r.src = n, src
	return 1, nil
}

// datagram reports truncation as a datagram that filled the buffer; the
// callers' buffers are one byte larger than anything they accept.
func (r *udpReader) datagram(int) ([]byte, netip.AddrPort, bool) {
	return r.buf[:r.n], r.src, false
}

type udpWriter struct {
	c       *net.UDPConn
	scratch []byte
	heads   [udpBatchSize][]byte
	bodies  [udpBatchSize][]byte
	dsts    [udpBatchSize]netip.AddrPort
	sent    [udpBatchSize]bool
	n       int
}

func newUDPWriter(c *net.UDPConn) (*udpWriter, error) { return &udpWriter{c: c}, nil }

func (w *udpWriter) add(head, payload []byte, to netip.AddrPort) bool {
	if w.n == udpBatchSize {
		return false
	}
	w.heads[w.n], w.bodies[w.n], w.dsts[w.n], w.sent[w.n] = head, payload, to, false
	w.n++
	return true
}

func (w *udpWriter) flush() {
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

func (w *udpWriter) len() int { return w.n }

func (w *udpWriter) result(i int) (int, netip.AddrPort, bool) {
	return len(w.bodies[i]), w.dsts[i], w.sent[i]
}

func (w *udpWriter) reset() { w.n = 0 }
