package socks

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Protocol constants from RFC 1928 and RFC 1929.
const (
	socks5Version    = 0x05
	userPassVersion  = 0x01 // RFC 1929 sub-negotiation version
	methodNoAuth     = 0x00
	methodUserPass   = 0x02
	methodNoAccept   = 0xFF
	authStatusOK     = 0x00
	authStatusFailed = 0x01

	cmdConnect      = 0x01
	cmdBind         = 0x02
	cmdUDPAssociate = 0x03

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04
)

// Reply codes, RFC 1928 section 6.
const (
	RepSucceeded          byte = 0x00
	RepGeneralFailure     byte = 0x01
	RepNotAllowed         byte = 0x02
	RepNetworkUnreachable byte = 0x03
	RepHostUnreachable    byte = 0x04
	RepConnectionRefused  byte = 0x05
	RepTTLExpired         byte = 0x06 // used for timeouts
	RepCommandUnsupported byte = 0x07
	RepAddrUnsupported    byte = 0x08
)

// errVersion is returned when the client does not speak SOCKS5. There is
// no reply for that: the connection is closed.
var errVersion = errors.New("not a SOCKS5 client")

// requestError is a malformed or unsupported request that still deserves a
// reply (RFC 1928 section 6) before the connection is closed.
type requestError struct {
	reply byte
	msg   string
}

func (e *requestError) Error() string { return e.msg }

// Addr is a SOCKS address: an IP address or a domain name, and a port.
type Addr struct {
	IP   netip.Addr // valid for ATYP IPv4 and IPv6
	Name string     // set for ATYP domain
	Port uint16
}

func (a Addr) String() string {
	if a.Name != "" {
		return net.JoinHostPort(a.Name, strconv.Itoa(int(a.Port)))
	}
	return netip.AddrPortFrom(a.IP, a.Port).String()
}

// Request is a parsed SOCKS5 request.
type Request struct {
	Cmd byte
	Dst Addr
}

// readGreeting reads the version/method-selection message and returns the
// offered methods.
func readGreeting(r io.Reader) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("read greeting: %w", err)
	}
	if hdr[0] != socks5Version {
		return nil, fmt.Errorf("greeting version %#x: %w", hdr[0], errVersion)
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return nil, fmt.Errorf("read %d methods: %w", hdr[1], err)
	}
	return methods, nil
}

// readUserPass reads an RFC 1929 username/password request. A zero-length
// name or password is returned as is; the caller rejects it like any wrong
// credential.
func readUserPass(r io.Reader) (user, pass string, err error) {
	var b [256]byte
	if _, err := io.ReadFull(r, b[:2]); err != nil {
		return "", "", fmt.Errorf("read auth header: %w", err)
	}
	if b[0] != userPassVersion {
		return "", "", fmt.Errorf("auth version %#x: want 0x01", b[0])
	}
	ulen := int(b[1])
	if _, err := io.ReadFull(r, b[:ulen+1]); err != nil {
		return "", "", fmt.Errorf("read username: %w", err)
	}
	user = string(b[:ulen])
	plen := int(b[ulen])
	if _, err := io.ReadFull(r, b[:plen]); err != nil {
		return "", "", fmt.Errorf("read password: %w", err)
	}
	return user, string(b[:plen]), nil
}

// readRequest reads a SOCKS5 request (RFC 1928 section 4). An unknown
// command or address type gives a *requestError carrying the reply code.
func readRequest(r io.Reader) (Request, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Request{}, fmt.Errorf("read request: %w", err)
	}
	if hdr[0] != socks5Version {
		return Request{}, fmt.Errorf("request version %#x: %w", hdr[0], errVersion)
	}
	req := Request{Cmd: hdr[1]}
	switch req.Cmd {
	case cmdConnect, cmdBind, cmdUDPAssociate:
	default:
		return req, &requestError{RepCommandUnsupported, fmt.Sprintf("unknown command %#x", req.Cmd)}
	}
	// hdr[2] is RSV; RFC 1928 gives it no meaning, so it is not checked.
	dst, err := readAddr(r, hdr[3])
	req.Dst = dst
	return req, err
}

// readAddr reads ATYP-specific DST.ADDR and DST.PORT.
func readAddr(r io.Reader, atyp byte) (Addr, error) {
	var b [255 + 2]byte // longest domain plus port
	var a Addr
	switch atyp {
	case atypIPv4:
		if _, err := io.ReadFull(r, b[:4+2]); err != nil {
			return a, fmt.Errorf("read IPv4 address: %w", err)
		}
		a.IP = netip.AddrFrom4([4]byte(b[:4]))
		a.Port = uint16(b[4])<<8 | uint16(b[5])
	case atypIPv6:
		if _, err := io.ReadFull(r, b[:16+2]); err != nil {
			return a, fmt.Errorf("read IPv6 address: %w", err)
		}
		a.IP = netip.AddrFrom16([16]byte(b[:16])).Unmap()
		a.Port = uint16(b[16])<<8 | uint16(b[17])
	case atypDomain:
		if _, err := io.ReadFull(r, b[:1]); err != nil {
			return a, fmt.Errorf("read domain length: %w", err)
		}
		n := int(b[0])
		if _, err := io.ReadFull(r, b[:n+2]); err != nil {
			return a, fmt.Errorf("read domain: %w", err)
		}
		a.Port = uint16(b[n])<<8 | uint16(b[n+1])
		name := string(b[:n])
		if ip, ok := parseIPLiteral(name); ok {
			a.IP = ip
			return a, nil
		}
		if err := checkHostname(name); err != nil {
			// Keep the name (quoted when logged) for the flow log.
			a.Name = name
			return a, &requestError{RepHostUnreachable, err.Error()}
		}
		a.Name = name
	default:
		return a, &requestError{RepAddrUnsupported, fmt.Sprintf("unknown address type %#x", atyp)}
	}
	return a, nil
}

// parseIPLiteral accepts an IP address sent as a domain name, which clients
// such as curl do for socks5h:// URLs with an IP host.
func parseIPLiteral(s string) (netip.Addr, bool) {
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

// checkHostname accepts DNS names made of letters, digits, '-' and '_'
// (seen in real names), labels of 1-63 bytes, 253 bytes in all, with an
// optional final dot. Anything else cannot be resolved and is refused
// before it reaches a resolver or a log line.
func checkHostname(s string) error {
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return errors.New("empty domain name")
	}
	if len(s) > 253 {
		return errors.New("domain name longer than 253 bytes")
	}
	for _, label := range strings.Split(s, ".") {
		if len(label) == 0 || len(label) > 63 {
			return errors.New("domain name has an empty or over-long label")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return fmt.Errorf("domain name has byte %#x", c)
			}
		}
	}
	return nil
}

// appendAddr appends ATYP, address and port for ap. An invalid ap is
// written as 0.0.0.0:0, the usual "no address" in failure replies.
func appendAddr(b []byte, ap netip.AddrPort) []byte {
	ip := ap.Addr().Unmap()
	switch {
	case ip.Is4():
		a := ip.As4()
		b = append(b, atypIPv4)
		b = append(b, a[:]...)
	case ip.Is6():
		a := ip.As16()
		b = append(b, atypIPv6)
		b = append(b, a[:]...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
		return append(b, 0, 0)
	}
	return append(b, byte(ap.Port()>>8), byte(ap.Port()))
}

// writeReply sends a reply with BND.ADDR/BND.PORT = bnd.
func writeReply(w io.Writer, rep byte, bnd netip.AddrPort) error {
	b := make([]byte, 0, 22)
	b = append(b, socks5Version, rep, 0x00)
	b = appendAddr(b, bnd)
	_, err := w.Write(b)
	return err
}
