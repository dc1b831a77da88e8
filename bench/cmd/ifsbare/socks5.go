package main

import (
	"bufio"
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
)

// SOCKS5 (RFC 1928) and username/password (RFC 1929) codes, only those
// this relay reads or sends.
const (
	socksVersion    = 5
	methodUserPass  = 0x02
	methodNoneFound = 0xFF // "no acceptable methods"
	authVersion     = 1
	authOK          = 0
	authFailed      = 1
	cmdConnect      = 1
	atypIPv4        = 1
	atypName        = 3
	atypIPv6        = 4

	repOK              = 0x00
	repFailure         = 0x01
	repNetUnreachable  = 0x03
	repHostUnreachable = 0x04
	repRefused         = 0x05
	repCmdUnsupported  = 0x07
	repAtypUnsupported = 0x08
)

// handshakeBuf holds any greeting or CONNECT request and most RFC 1929
// messages, so that each client message costs one read(2) (a longer one
// is read straight into the caller's buffer).
const handshakeBuf = 512

// credentials is the one user the SOCKS5 mode accepts.
type credentials struct{ user, pass []byte }

// parseCredentials reads "USER:PASS" (the password may hold ':').
func parseCredentials(s string) (*credentials, error) {
	user, pass, ok := strings.Cut(s, ":")
	if !ok || len(user) == 0 || len(user) > 255 || len(pass) == 0 || len(pass) > 255 {
		return nil, errors.New("want USER:PASS, each 1-255 bytes")
	}
	return &credentials{user: []byte(user), pass: []byte(pass)}, nil
}

// socks serves one SOCKS5 client: greeting, RFC 1929 login, CONNECT, and
// then the same relay as the bare forwarder. Any protocol error closes
// the connection, after the reply RFC 1928 gives for it, if any.
func (f *forwarder) socks(down *net.TCPConn) {
	defer down.Close()
	r := bufio.NewReaderSize(down, handshakeBuf)
	if !f.login(r, down) {
		return
	}
	up, code := f.connect(r)
	if _, err := down.Write(reply(code, up)); err != nil || up == nil {
		if up != nil {
			up.Close()
		}
		return
	}
	// What the client sent after its request, before reading the reply,
	// is already in r: it goes first.
	if n := r.Buffered(); n > 0 {
		b, _ := r.Peek(n)
		if _, err := up.Write(b); err != nil {
			up.Close()
			return
		}
	}
	relay(down, up)
}

// login reads the greeting, picks username/password and checks the
// client's against f.creds. It reports whether the client may go on.
func (f *forwarder) login(r *bufio.Reader, w io.Writer) bool {
	var b [2 + 255]byte
	if _, err := io.ReadFull(r, b[:2]); err != nil || b[0] != socksVersion {
		return false
	}
	methods := b[2 : 2+int(b[1])]
	if _, err := io.ReadFull(r, methods); err != nil {
		return false
	}
	method := byte(methodNoneFound)
	if slices.Contains(methods, methodUserPass) {
		method = methodUserPass
	}
	if _, err := w.Write([]byte{socksVersion, method}); err != nil || method != methodUserPass {
		return false
	}
	// VER ULEN UNAME PLEN PASSWD
	if _, err := io.ReadFull(r, b[:2]); err != nil || b[0] != authVersion {
		return false
	}
	user := b[:b[1]]
	if _, err := io.ReadFull(r, user); err != nil {
		return false
	}
	userOK := subtle.ConstantTimeCompare(user, f.creds.user)
	plen, err := r.ReadByte()
	if err != nil {
		return false
	}
	pass := b[:plen]
	if _, err := io.ReadFull(r, pass); err != nil {
		return false
	}
	ok := userOK&subtle.ConstantTimeCompare(pass, f.creds.pass) == 1
	status := byte(authOK)
	if !ok {
		status = authFailed
	}
	_, err = w.Write([]byte{authVersion, status})
	return err == nil && ok
}

// connect reads the request and dials its destination from a socket
// bound to the egress interface. It returns the upstream connection, or
// nil and the reply code.
func (f *forwarder) connect(r *bufio.Reader) (*net.TCPConn, byte) {
	ip, name, port, code := readRequest(r)
	if code != repOK {
		return nil, code
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	if name != "" {
		ips, err := f.dialer.LookupIP(ctx, name)
		if err != nil || len(ips) == 0 {
			return nil, repHostUnreachable
		}
		ip = ips[0]
	}
	up, err := f.dialer.DialTCP(ctx, netip.AddrPortFrom(ip, port))
	if err != nil {
		return nil, dialReply(err)
	}
	return up, repOK
}

// readRequest reads a CONNECT request: its destination is ip, or name
// when the client sent one, and port. Any other code is the reply to
// refuse it with.
func readRequest(r *bufio.Reader) (ip netip.Addr, name string, port uint16, code byte) {
	var b [255 + 2]byte
	// VER CMD RSV ATYP
	if _, err := io.ReadFull(r, b[:4]); err != nil || b[0] != socksVersion {
		return ip, "", 0, repFailure
	}
	if b[1] != cmdConnect {
		return ip, "", 0, repCmdUnsupported
	}
	atyp := b[3]
	var n int
	switch atyp {
	case atypIPv4:
		n = 4
	case atypIPv6:
		n = 16
	case atypName:
		l, err := r.ReadByte()
		if err != nil {
			return ip, "", 0, repFailure
		}
		n = int(l)
	default:
		return ip, "", 0, repAtypUnsupported
	}
	if _, err := io.ReadFull(r, b[:n+2]); err != nil {
		return ip, "", 0, repFailure
	}
	port = binary.BigEndian.Uint16(b[n:])
	if atyp == atypName {
		if n == 0 {
			return ip, "", 0, repHostUnreachable
		}
		return ip, string(b[:n]), port, repOK
	}
	ip, _ = netip.AddrFromSlice(b[:n])
	return ip.Unmap(), "", port, repOK
}

// dialReply is the reply code for a failed connect.
func dialReply(err error) byte {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return repRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return repNetUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return repHostUnreachable
	}
	return repFailure
}

// reply is the CONNECT reply: success with the upstream socket's own
// address and port (BND.ADDR, BND.PORT), or code with a zero IPv4 address.
func reply(code byte, up *net.TCPConn) []byte {
	b := []byte{socksVersion, code, 0, atypIPv4}
	var bnd netip.AddrPort
	if up != nil {
		bnd = up.LocalAddr().(*net.TCPAddr).AddrPort()
	}
	ip := bnd.Addr().Unmap()
	switch {
	case ip.Is4():
		b = append(b, ip.AsSlice()...)
	case ip.Is6():
		b[3] = atypIPv6
		b = append(b, ip.AsSlice()...)
	default:
		b = append(b, 0, 0, 0, 0)
	}
	return binary.BigEndian.AppendUint16(b, bnd.Port())
}
