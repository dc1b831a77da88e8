package socks

import (
	"bytes"
	"net"
	"sync"
)

// hsReader reads the handshake in as few system calls as the client's
// segments allow: each read from the connection fills a small buffer that
// the parsers then consume, instead of one read per field. Bytes a client
// sends right after its request (optimistic data, before our reply) stay in
// the buffer; detach hands them over.
type hsReader struct {
	c    net.Conn
	buf  *[hsBufSize]byte
	r, w int
	// owner, when set, is told of every read that brought bytes (the
	// handshake caps order evictions by it).
	owner *serverConn
}

// hsBufSize holds any greeting or request and most authentications in one
// read (the longest RFC 1929 message is 513 bytes).
const hsBufSize = 640

var hsPool = sync.Pool{New: func() any { return new([hsBufSize]byte) }}

func newHSReader(c net.Conn) *hsReader {
	return &hsReader{c: c, buf: hsPool.Get().(*[hsBufSize]byte)}
}

func (h *hsReader) Read(p []byte) (int, error) {
	if h.r == h.w {
		if n, err := h.fill(); n == 0 {
			return 0, err
		}
	}
	n := copy(p, h.buf[h.r:h.w])
	h.r += n
	return n, nil
}

// detach returns the bytes read past the handshake (nil if none) and gives
// the buffer back; the reader must not be used afterwards.
func (h *hsReader) detach() []byte {
	var rest []byte
	if h.r < h.w {
		rest = bytes.Clone(h.buf[h.r:h.w])
	}
	hsPool.Put(h.buf)
	h.buf = nil
	return rest
}

// peekByte returns the first unread byte without consuming it, reading
// from the connection if none is buffered.
func (h *hsReader) peekByte() (byte, error) {
	for h.r == h.w {
		if n, err := h.fill(); n == 0 && err != nil {
			return 0, err
		}
	}
	return h.buf[h.r], nil
}

// fill reads what the connection has into the (consumed) buffer.
func (h *hsReader) fill() (int, error) {
	n, err := h.c.Read(h.buf[:])
	h.r, h.w = 0, n
	if n > 0 && h.owner != nil {
		h.owner.srv.hsProgress(h.owner)
	}
	return n, err
}
