package socks

import (
	"errors"
	"fmt"
)

// Protocols is a set of the protocols one listen address serves. The
// server tells them apart by the first byte a client sends: 0x05 SOCKS5,
// 0x04 SOCKS4/4a, anything else an HTTP request line.
type Protocols uint8

const (
	ProtoSOCKS5 Protocols = 1 << iota
	ProtoHTTP
	// ProtoSOCKS4 covers SOCKS4 and SOCKS4a; they carry no password, so
	// the config allows it only where none is required.
	ProtoSOCKS4
)

// Flow protocols, as logged (field protocol) and in the metrics' protocol
// label: a short fixed list, so the label stays bounded.
const (
	protoSOCKS5      = "socks5"
	protoSOCKS4      = "socks4"
	protoHTTPConnect = "http-connect"
	protoHTTP        = "http"
)

const socks4Version = 0x04

// errProtocol: the client's first byte asks for a protocol the listen
// address does not serve. The connection is closed without a reply.
var errProtocol = errors.New("protocol not enabled on this listener")

// errNoFirstByte: the client closed or went silent before sending a byte;
// nothing tells which protocol it meant, so no protocol answers.
var errNoFirstByte = errors.New("no data before close or handshake timeout")

// protocols are the protocols sc's listen address serves: its listener's
// own, else the server's, else SOCKS5 alone (a Settings built without the
// key, as by the tests of this package that predate it).
func (sc *serverConn) protocols() Protocols {
	switch {
	case sc.lis != nil && sc.lis.Protocols != 0:
		return sc.lis.Protocols
	case sc.st.Protocols != 0:
		return sc.st.Protocols
	}
	return ProtoSOCKS5
}

// sniff reads the client's first bytes and says which of the enabled
// protocols it speaks. The bytes stay in hs for that protocol's parser.
func (sc *serverConn) sniff(hs *hsReader) (Protocols, error) {
	b, err := hs.peekByte()
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errNoFirstByte, err)
	}
	var p Protocols
	switch b {
	case socks5Version:
		p = ProtoSOCKS5
	case socks4Version:
		p = ProtoSOCKS4
	default:
		p = ProtoHTTP
	}
	if sc.protocols()&p == 0 {
		if sc.protocols()&ProtoSOCKS5 != 0 {
			// Answered as before other protocols existed: the
			// SOCKS5 greeting parser reports the wrong version.
			return ProtoSOCKS5, nil
		}
		return 0, fmt.Errorf("first byte %#x: %w", b, errProtocol)
	}
	return p, nil
}
