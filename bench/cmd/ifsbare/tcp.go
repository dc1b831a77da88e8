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

// acceptLoop forwards each connection on its own goroutines until ln
// closes.
func (f *forwarder) acceptLoop(ln *net.TCPListener, up netip.AddrPort) {
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
		go f.pipe(c, up)
	}
}

// pipe connects down to the upstream and copies both ways until both
// directions have ended.
func (f *forwarder) pipe(down *net.TCPConn, up netip.AddrPort) {
	defer down.Close()
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	upc, err := f.dialer.DialTCP(ctx, up)
	cancel()
	if err != nil {
		return
	}
	defer upc.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		oneWay(down, upc)
	}()
	oneWay(upc, down)
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
