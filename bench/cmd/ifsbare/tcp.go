package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"time"
)

// dialTimeout bounds one upstream connect.
const dialTimeout = 10 * time.Second

// acceptLoop hands each connection to serve on its own goroutine until ln
// closes.
func acceptLoop(ln *net.TCPListener, serve func(*net.TCPConn)) {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors: back off instead of spinning.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go serve(c)
	}
}

// pipe connects down to the fixed upstream and relays until both
// directions have ended.
func (f *forwarder) pipe(down *net.TCPConn, up netip.AddrPort) {
	defer down.Close()
	upc, err := f.dial(up)
	if err != nil {
		return
	}
	relay(down, upc)
}

// dial connects to dst from a socket bound to the egress interface.
func (f *forwarder) dial(dst netip.AddrPort) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	return f.dialer.DialTCP(ctx, dst)
}

// relay copies both ways between down and up until both directions have
// ended, then closes up (down is the caller's). The bare forwarder and
// the SOCKS5 mode share it, so that the two differ only by the handshake.
func relay(down, up *net.TCPConn) {
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		oneWay(down, up)
	}()
	oneWay(up, down)
	<-done
}

// oneWay copies src to dst. io.Copy between two *net.TCPConn is
// dst.ReadFrom(src), which splices through a pipe. At the end of src the
// half-close is passed on; on an error (a reset) both sockets are closed,
// so the other direction ends too instead of waiting forever.
func oneWay(dst, src *net.TCPConn) {
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		src.Close()
		return
	}
	dst.CloseWrite()
}
