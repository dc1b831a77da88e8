package httpproxy

import (
	"net"
	"sync"
)

// connListener hands net/http's server the one connection, then blocks
// until it is closed, so that Server.Serve returns when the connection
// ends (or is hijacked) rather than at once.
type connListener struct {
	mu   sync.Mutex
	c    net.Conn // nil once accepted
	done chan struct{}
	once sync.Once
}

func (l *connListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.c
	l.c = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr {
	return dummyAddr{}
}

type dummyAddr struct{}

func (dummyAddr) Network() string { return "tcp" }
func (dummyAddr) String() string  { return "ifsocks-connection" }

// prefixConn is the client connection with the bytes the core read while
// sniffing put back in front.
type prefixConn struct {
	net.Conn
	buf []byte
	// closed: the fast path (fast.go) ended the connection.
	closed bool
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
