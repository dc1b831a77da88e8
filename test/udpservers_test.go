//go:build linux

package test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// UDP services in U for the UDP ASSOCIATE tests.
const (
	udpEchoPort  = 7    // echo server, on svcV4 and svcV6
	udpProbePort = 4242 // sender of unsolicited datagrams, same addresses
	// udpSeenMax bounds how much of each datagram the echo server keeps
	// for udpServers.seen; tokens are always at the start of a payload.
	udpSeenMax = 128
)

// udpServers is the UDP side of U: an echo server that answers every
// datagram with "<source addr:port>|<payload>", so a reply names the
// address (and so the NIC) the datagram left the proxy from, and a second
// socket per family that sends datagrams nobody asked for.
type udpServers struct {
	echo  [2]net.PacketConn // IPv4, IPv6
	probe [2]net.PacketConn

	mu   sync.Mutex
	seen []udpSeen // every datagram the echo server received
}

type udpSeen struct {
	src     netip.AddrPort
	payload string // first udpSeenMax bytes
}

func startUDPServers(ns string) (*udpServers, error) {
	s := &udpServers{}
	for i, ip := range []string{svcV4, svcV6} {
		network := [2]string{"udp4", "udp6"}[i]
		var err error
		if s.echo[i], err = nstest.ListenPacketIn(ns, network, net.JoinHostPort(ip, fmt.Sprint(udpEchoPort))); err != nil {
			s.close()
			return nil, fmt.Errorf("udp echo on %s: %w", ip, err)
		}
		if s.probe[i], err = nstest.ListenPacketIn(ns, network, net.JoinHostPort(ip, fmt.Sprint(udpProbePort))); err != nil {
			s.close()
			return nil, fmt.Errorf("udp probe on %s: %w", ip, err)
		}
		go s.serveEcho(s.echo[i])
	}
	return s, nil
}

func (s *udpServers) close() {
	for _, pc := range append(s.echo[:], s.probe[:]...) {
		if pc != nil {
			pc.Close()
		}
	}
}

func (s *udpServers) serveEcho(pc net.PacketConn) {
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ICMP errors reported on the socket
		}
		ua := from.(*net.UDPAddr).AddrPort()
		src := netip.AddrPortFrom(ua.Addr().Unmap(), ua.Port())
		s.mu.Lock()
		s.seen = append(s.seen, udpSeen{src: src, payload: string(buf[:min(n, udpSeenMax)])})
		s.mu.Unlock()
		reply := append([]byte(src.String()+"|"), buf[:n]...)
		_, _ = pc.WriteTo(reply, from)
	}
}

// sawToken returns every datagram the echo server received whose payload
// contains token.
func (s *udpServers) sawToken(token string) []udpSeen {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []udpSeen
	for _, d := range s.seen {
		if strings.Contains(d.payload, token) {
			out = append(out, d)
		}
	}
	return out
}

// sendProbe sends payload to dst from the probe socket of dst's family
// (source svcV4 or svcV6, port udpProbePort).
func (s *udpServers) sendProbe(dst netip.AddrPort, payload []byte) error {
	i := 0
	if dst.Addr().Is6() {
		i = 1
	}
	_, err := s.probe[i].WriteTo(payload, net.UDPAddrFromAddrPort(dst))
	return err
}

// parseEcho splits an echo reply into the source the echo server saw and
// the payload it echoed.
func parseEcho(b []byte) (netip.AddrPort, string, error) {
	src, payload, ok := strings.Cut(string(b), "|")
	if !ok {
		return netip.AddrPort{}, "", fmt.Errorf("echo reply %q has no '|'", truncate(b))
	}
	ap, err := netip.ParseAddrPort(src)
	if err != nil {
		return netip.AddrPort{}, "", fmt.Errorf("echo reply %q: %w", truncate(b), err)
	}
	return ap, payload, nil
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}
