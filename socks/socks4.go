package socks

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// SOCKS4 and SOCKS4a (the 4a extension: DSTIP 0.0.0.x with x != 0 means a
// host name follows the user id). Only CONNECT is served. The user id is
// read and ignored: SOCKS4 has no password, so a listen address that
// requires one never serves it (the config refuses that).
const (
	socks4Connect  = 0x01
	socks4Granted  = 90
	socks4Rejected = 91
	// socks4MaxField bounds the user id and the host name, each ended by
	// a NUL; longer ones are refused rather than read without end.
	socks4MaxField = 255
)

// errSOCKS4Field: a user id or host name without its NUL within
// socks4MaxField bytes.
var errSOCKS4Field = errors.New("SOCKS4 user id or host name too long")

// readSOCKS4 reads a SOCKS4/4a request. A request that is whole but not
// servable (BIND, a bad host name) gives a *requestError.
func readSOCKS4(r io.Reader) (Request, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Request{}, fmt.Errorf("read SOCKS4 request: %w", err)
	}
	if hdr[0] != socks4Version {
		return Request{}, fmt.Errorf("SOCKS4 version %#x: %w", hdr[0], errVersion)
	}
	req := Request{Cmd: hdr[1]}
	req.Dst.Port = uint16(hdr[2])<<8 | uint16(hdr[3])
	ip := netip.AddrFrom4([4]byte(hdr[4:8]))
	if _, err := readNULString(r); err != nil { // user id
		return req, err
	}
	a := ip.As4()
	if a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] != 0 {
		name, err := readNULString(r)
		if err != nil {
			return req, err
		}
		if lit, ok := parseIPLiteral(name); ok {
			req.Dst.IP = lit
		} else {
			req.Dst.Name = name
			if err := checkHostname(name); err != nil {
				return req, &requestError{RepHostUnreachable, err.Error()}
			}
		}
	} else {
		req.Dst.IP = ip
	}
	if req.Cmd != socks4Connect {
		return req, &requestError{RepCommandUnsupported, fmt.Sprintf("SOCKS4 command %#x not supported", req.Cmd)}
	}
	return req, nil
}

// readNULString reads bytes up to a NUL, at most socks4MaxField of them.
func readNULString(r io.Reader) (string, error) {
	var b [socks4MaxField + 1]byte
	for i := range b {
		if _, err := io.ReadFull(r, b[i:i+1]); err != nil {
			return "", fmt.Errorf("read SOCKS4 string: %w", err)
		}
		if b[i] == 0 {
			return string(b[:i]), nil
		}
	}
	return "", errSOCKS4Field
}

// socks4Answer writes SOCKS4 replies: VN 0, CD 90 or 91, and the bound
// address when it is IPv4 (clients ignore it for CONNECT).
type socks4Answer struct{ w io.Writer }

func (a socks4Answer) write(cd byte, bnd netip.AddrPort) error {
	b := [8]byte{0, cd}
	if ip := bnd.Addr().Unmap(); ip.Is4() {
		b[2], b[3] = byte(bnd.Port()>>8), byte(bnd.Port())
		copy(b[4:], ip.AsSlice())
	}
	_, err := a.w.Write(b[:])
	return err
}

func (a socks4Answer) refusal(byte, error) { a.write(socks4Rejected, netip.AddrPort{}) }

func (a socks4Answer) success(bnd netip.AddrPort) ([]byte, error) {
	return nil, a.write(socks4Granted, bnd)
}

// serveSOCKS4 serves a SOCKS4/4a connection; see serve for the result.
func (sc *serverConn) serveSOCKS4(hs *hsReader, rec *record) bool {
	rec.protocol = protoSOCKS4
	// Read straight from hs, whose buffer holds the whole request in
	// the usual case, so that bytes after it stay there for detach.
	req, err := readSOCKS4(hs)
	early := hs.detach()
	sc.srv.endHandshake(sc)
	rec.target = req.Dst
	sc.ans = socks4Answer{sc.conn}
	var re *requestError
	switch {
	case err != nil && !errors.As(err, &re):
		sc.logHandshake(rec, err)
		return false
	case sc.needsPassword():
		// The config never allows this; refuse rather than serve a
		// password listener without one.
		sc.refuse(rec, RepNotAllowed, outcomeDenied, errors.New("SOCKS4 on a listen address that requires a password"))
		return false
	case err != nil:
		sc.refuse(rec, re.reply, outcomeBadRequest, err)
		return false
	}
	sc.conn.SetDeadline(time.Time{})
	return sc.startConnect(rec, "", req.Dst, early)
}

// startConnect runs a CONNECT-like flow of user name ("" without
// authentication) to dst for any protocol: the user's egress, the flow
// limits, then connect. It returns true once the relay owns the connection.
func (sc *serverConn) startConnect(rec *record, name string, dst Addr, early []byte) bool {
	user, eg, ok := sc.flowUser(rec, name)
	// An HTTP connection holds its one flow of max_connections from its
	// first request: a CONNECT after forwarded requests has it already.
	if !ok || (sc.flow == nil && !sc.acquireFlow(rec, name, user)) {
		return false
	}
	return sc.connect(rec, dst, user, eg, early)
}
