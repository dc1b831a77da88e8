package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
)

// SOCKS5 constants (RFC 1928, RFC 1929), only those this client sends or
// expects.
const (
	socksVersion   = 5
	methodNone     = 0x00
	methodUserPass = 0x02
	cmdConnect     = 0x01
	cmdUDP         = 0x03
	atypIPv4       = 0x01
	atypName       = 0x03
	atypIPv6       = 0x04
)

// ReplyError is a SOCKS reply other than "succeeded".
type ReplyError byte

func (e ReplyError) Error() string { return fmt.Sprintf("socks reply %#02x", byte(e)) }

// errAuth: the proxy refused our credentials or every method we offered.
var errAuth = errors.New("socks authentication refused")

// handshake runs greeting, optional RFC 1929 authentication and one
// request on c, one step at a time as an ordinary client does (no
// pipelining), and returns BND.ADDR:BND.PORT.
func handshake(c net.Conn, user, pass string, cmd byte, dst netip.AddrPort) (netip.AddrPort, error) {
	var buf [600]byte
	method := byte(methodNone)
	if user != "" {
		method = methodUserPass
	}
	if _, err := c.Write([]byte{socksVersion, 1, method}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("write greeting: %w", err)
	}
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("read method: %w", err)
	}
	if buf[0] != socksVersion || buf[1] != method {
		return netip.AddrPort{}, fmt.Errorf("%w: method %#02x", errAuth, buf[1])
	}
	if method == methodUserPass {
		if err := authenticate(c, buf[:], user, pass); err != nil {
			return netip.AddrPort{}, err
		}
	}
	atyp := byte(atypIPv4)
	if dst.Addr().Is6() {
		atyp = atypIPv6
	}
	req := append(buf[:0], socksVersion, cmd, 0, atyp)
	req = append(req, dst.Addr().AsSlice()...)
	req = binary.BigEndian.AppendUint16(req, dst.Port())
	if _, err := c.Write(req); err != nil {
		return netip.AddrPort{}, fmt.Errorf("write request: %w", err)
	}
	return readReply(c, buf[:])
}

func authenticate(c net.Conn, buf []byte, user, pass string) error {
	if len(user) > 255 || len(pass) > 255 {
		return errors.New("username or password longer than 255 bytes")
	}
	msg := append(buf[:0], 1, byte(len(user)))
	msg = append(msg, user...)
	msg = append(msg, byte(len(pass)))
	msg = append(msg, pass...)
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write auth: %w", err)
	}
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		return fmt.Errorf("read auth status: %w", err)
	}
	if buf[1] != 0 {
		return fmt.Errorf("%w: status %#02x", errAuth, buf[1])
	}
	return nil
}

// readReply reads a reply (RFC 1928 section 6). A name in BND.ADDR is
// read and dropped: none of the proxies measured sends one.
func readReply(r io.Reader, buf []byte) (netip.AddrPort, error) {
	if _, err := io.ReadFull(r, buf[:4]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("read reply: %w", err)
	}
	if buf[0] != socksVersion {
		return netip.AddrPort{}, fmt.Errorf("reply version %#02x", buf[0])
	}
	if buf[1] != 0 {
		return netip.AddrPort{}, ReplyError(buf[1])
	}
	var n int
	switch buf[3] {
	case atypIPv4:
		n = 4
	case atypIPv6:
		n = 16
	case atypName:
		if _, err := io.ReadFull(r, buf[:1]); err != nil {
			return netip.AddrPort{}, fmt.Errorf("read reply: %w", err)
		}
		n = int(buf[0])
	default:
		return netip.AddrPort{}, fmt.Errorf("reply address type %#02x", buf[3])
	}
	if _, err := io.ReadFull(r, buf[:n+2]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("read reply address: %w", err)
	}
	port := binary.BigEndian.Uint16(buf[n:])
	ip, ok := netip.AddrFromSlice(buf[:n])
	if !ok || buf[3] == atypName {
		return netip.AddrPortFrom(netip.Addr{}, port), nil
	}
	return netip.AddrPortFrom(ip.Unmap(), port), nil
}

// udpHeaderLen is the SOCKS UDP request header for an IPv4 destination:
// RSV(2) FRAG(1) ATYP(1) ADDR(4) PORT(2) (RFC 1928 section 7).
const udpHeaderLen = 10

// putUDPHeader writes the header for dst into b[:udpHeaderLen].
func putUDPHeader(b []byte, dst netip.AddrPort) {
	b[0], b[1], b[2], b[3] = 0, 0, 0, atypIPv4
	a4 := dst.Addr().As4()
	copy(b[4:8], a4[:])
	binary.BigEndian.PutUint16(b[8:10], dst.Port())
}

// udpPayload returns the payload of a datagram from the relay, after its
// header (any address type). Fragments are refused: no proxy should send
// them to a client that never asked for fragmentation.
func udpPayload(b []byte) ([]byte, error) {
	if len(b) < 4 || b[0] != 0 || b[1] != 0 || b[2] != 0 {
		return nil, errors.New("bad UDP relay header")
	}
	var n int
	switch b[3] {
	case atypIPv4:
		n = 4 + 4 + 2
	case atypIPv6:
		n = 4 + 16 + 2
	case atypName:
		if len(b) < 5 {
			return nil, errors.New("short UDP relay header")
		}
		n = 4 + 1 + int(b[4]) + 2
	default:
		return nil, fmt.Errorf("UDP relay header address type %#02x", b[3])
	}
	if len(b) < n {
		return nil, errors.New("short UDP relay header")
	}
	return b[n:], nil
}
