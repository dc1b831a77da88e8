package socks

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// maxUDPHeader is the longest SOCKS UDP request header: RSV(2) FRAG(1)
// ATYP(1) a 255-byte name with its length byte, and the port.
const maxUDPHeader = 2 + 1 + 1 + 1 + 255 + 2

// errFragment: a datagram with FRAG != 0. RFC 1928 section 7 lets a server
// that does not reassemble drop them, which is what ifsocks does.
var errFragment = errors.New("fragmented datagram (FRAG != 0)")

// parseUDPHeader splits a client datagram (RFC 1928 section 7) into its
// destination and payload. payload aliases b.
func parseUDPHeader(b []byte) (dst Addr, payload []byte, err error) {
	if len(b) < 4 {
		return dst, nil, fmt.Errorf("datagram of %d bytes: too short for a header", len(b))
	}
	if b[0] != 0 || b[1] != 0 {
		return dst, nil, fmt.Errorf("RSV %#x%02x: want zero", b[0], b[1])
	}
	if b[2] != 0 {
		return dst, nil, errFragment
	}
	// An IP address, the usual case, is taken straight from b: readAddr
	// through an io.Reader costs two allocations per datagram.
	switch {
	case b[3] == atypIPv4 && len(b) >= 4+4+2:
		dst.IP = netip.AddrFrom4([4]byte(b[4:8]))
		dst.Port = binary.BigEndian.Uint16(b[8:10])
		return dst, b[10:], nil
	case b[3] == atypIPv6 && len(b) >= 4+16+2:
		dst.IP = netip.AddrFrom16([16]byte(b[4:20])).Unmap()
		dst.Port = binary.BigEndian.Uint16(b[20:22])
		return dst, b[22:], nil
	}
	r := bytes.NewReader(b[4:])
	dst, err = readAddr(r, b[3])
	if err != nil {
		return dst, nil, fmt.Errorf("datagram header: %w", err)
	}
	return dst, b[len(b)-r.Len():], nil
}

// appendUDPReply appends the header for a datagram from src and then the
// payload: the form in which replies go back to the client.
func appendUDPReply(dst []byte, src netip.AddrPort, payload []byte) []byte {
	return append(appendUDPReplyHeader(dst, src), payload...)
}

// maxUDPReplyHeader is the longest header appendUDPReplyHeader writes:
// RSV FRAG, ATYP, an IPv6 address and the port.
const maxUDPReplyHeader = 3 + 1 + 16 + 2

// udpReplyHeaderLen is the length of the header appendUDPReplyHeader
// writes for src.
func udpReplyHeaderLen(src netip.AddrPort) int {
	if src.Addr().Unmap().Is6() {
		return maxUDPReplyHeader
	}
	return 3 + 1 + 4 + 2
}

// appendUDPReplyHeader appends the header of a reply from src alone: the
// relay sends it and the payload as two pieces of one datagram.
func appendUDPReplyHeader(dst []byte, src netip.AddrPort) []byte {
	return appendAddr(append(dst, 0, 0, 0), src)
}
