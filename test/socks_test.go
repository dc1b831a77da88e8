//go:build linux

package test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Minimal SOCKS5 client (RFC 1928 + RFC 1929) that reports every byte the
// server decides on, so tests can assert exact method, status and reply
// codes (higher-level clients collapse them into an error string).

const (
	methodNoAuth   byte = 0x00
	methodUserPass byte = 0x02
	methodNone     byte = 0xFF
)

type socksRequest struct {
	proxy   string // proxy address, dialled from the client namespace
	methods []byte // offered methods; nil means {0x02}
	user    string
	pass    string
	target  string // host:port; IP literals use ATYP 1/4, names ATYP 3
	atyp    byte   // override of the address type byte (0 = derive)
	cmd     byte   // request command; 0 means CONNECT (0x01)
}

type socksResult struct {
	method     byte           // method chosen by the server
	authStatus int            // RFC 1929 status, -1 if auth did not happen
	reply      int            // RFC 1928 REP, -1 if CONNECT was not reached
	bound      netip.AddrPort // BND.ADDR:BND.PORT for ATYP 1/4 replies
	closed     bool           // server closed the connection after a failure
	localAddr  string         // our end, as the daemon logs it in "client"
	conn       net.Conn       // still open after reply 0x00; caller closes
}

// socksDo performs greeting, authentication and CONNECT from namespace ns.
// Protocol violations by the server are returned as errors.
func socksDo(ctx context.Context, ns string, req socksRequest) (socksResult, error) {
	res := socksResult{authStatus: -1, reply: -1}
	c, err := nstest.Dialer{NS: ns, Timeout: 5 * time.Second}.DialContext(ctx, "tcp", req.proxy)
	if err != nil {
		return res, err
	}
	res.localAddr = c.LocalAddr().String()
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	if d, has := ctx.Deadline(); has && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetDeadline(deadline)

	methods := req.methods
	if methods == nil {
		methods = []byte{methodUserPass}
	}
	if _, err := c.Write(append([]byte{5, byte(len(methods))}, methods...)); err != nil {
		return res, err
	}
	var b [2]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return res, fmt.Errorf("method selection: %w", err)
	}
	if b[0] != 5 {
		return res, fmt.Errorf("method selection: version %#x, want 5", b[0])
	}
	res.method = b[1]
	switch res.method {
	case methodNone:
		res.closed = closedByPeer(c)
		return res, nil
	case methodUserPass:
		msg := []byte{1, byte(len(req.user))}
		msg = append(msg, req.user...)
		msg = append(msg, byte(len(req.pass)))
		msg = append(msg, req.pass...)
		if _, err := c.Write(msg); err != nil {
			return res, err
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return res, fmt.Errorf("auth status: %w", err)
		}
		if b[0] != 1 {
			return res, fmt.Errorf("auth status: version %#x, want 1", b[0])
		}
		res.authStatus = int(b[1])
		if b[1] != 0 {
			res.closed = closedByPeer(c)
			return res, nil
		}
	case methodNoAuth:
	default:
		return res, fmt.Errorf("server chose method %#x, which we did not offer", res.method)
	}

	connect, err := connectRequest(req)
	if err != nil {
		return res, err
	}
	if _, err := c.Write(connect); err != nil {
		return res, err
	}
	var h [4]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return res, fmt.Errorf("connect reply: %w", err)
	}
	if h[0] != 5 || h[2] != 0 {
		return res, fmt.Errorf("connect reply header % x", h)
	}
	res.reply = int(h[1])
	var addrLen int
	switch h[3] {
	case 1:
		addrLen = 4
	case 4:
		addrLen = 16
	case 3:
		var l [1]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return res, err
		}
		addrLen = int(l[0])
	default:
		return res, fmt.Errorf("connect reply ATYP %#x", h[3])
	}
	rest := make([]byte, addrLen+2)
	if _, err := io.ReadFull(c, rest); err != nil {
		return res, fmt.Errorf("connect reply address: %w", err)
	}
	if ip, ok := netip.AddrFromSlice(rest[:addrLen]); ok && h[3] != 3 {
		res.bound = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(rest[addrLen:]))
	}
	if res.reply != 0 {
		res.closed = closedByPeer(c)
		return res, nil
	}
	_ = c.SetDeadline(time.Time{})
	ok = true
	res.conn = c
	return res, nil
}

func connectRequest(req socksRequest) ([]byte, error) {
	host, portStr, err := net.SplitHostPort(req.target)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, err
	}
	cmd := req.cmd
	if cmd == 0 {
		cmd = 1
	}
	msg := []byte{5, cmd, 0}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is4() {
		msg = append(append(msg, 1), ip.AsSlice()...)
	} else if err == nil {
		msg = append(append(msg, 4), ip.AsSlice()...)
	} else {
		msg = append(append(msg, 3, byte(len(host))), host...)
	}
	if req.atyp != 0 {
		// Unknown ATYP: send only the header. The server cannot know the
		// address length, so anything after it would stay unread and turn
		// the server's close into an RST that may eat the reply.
		return append(msg[:3], req.atyp), nil
	}
	return binary.BigEndian.AppendUint16(msg, uint16(port)), nil
}

// closedByPeer reports whether the server closes the connection within the
// deadline already set on c, without sending anything more.
func closedByPeer(c net.Conn) bool {
	var b [1]byte
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err := c.Read(b[:])
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}
