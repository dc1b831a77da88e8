//go:build linux

package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Minimal UDP ASSOCIATE client (RFC 1928 section 7). The control
// connection is negotiated by socksDo; the client's UDP socket is created
// inside the client namespace, so everything it sends comes from C.

// udpAssoc is one association as the client sees it.
type udpAssoc struct {
	res   socksResult    // handshake outcome; res.conn is the control connection
	pc    *net.UDPConn   // client UDP socket in C
	relay netip.AddrPort // BND.ADDR:BND.PORT of the reply
}

type udpOpts struct {
	proxy      string // proxyListen4 (default) or proxyListen6
	user, pass string
	portZero   bool // announce port 0: the daemon learns it from the first datagram
}

// udpAssociate opens a client UDP socket in ns and performs UDP ASSOCIATE
// for it. It fails the test unless the daemon answers 0x00; use
// udpAssociateRaw to look at refusals.
func udpAssociate(tb testing.TB, ns string, o udpOpts) *udpAssoc {
	tb.Helper()
	a, err := udpAssociateRaw(ns, o)
	if err != nil {
		tb.Fatalf("UDP ASSOCIATE as %s via %s: %v", o.user, o.proxy, err)
	}
	if a.res.reply != 0 {
		a.close()
		tb.Fatalf("UDP ASSOCIATE as %s via %s: auth status %d reply %#x, want success", o.user, o.proxy, a.res.authStatus, a.res.reply)
	}
	tb.Cleanup(a.close)
	return a
}

func udpAssociateRaw(ns string, o udpOpts) (*udpAssoc, error) {
	if o.proxy == "" {
		o.proxy = proxyListen4
	}
	network, local, unspec := "udp4", clientV4, "0.0.0.0"
	if strings.HasPrefix(o.proxy, "[") {
		network, local, unspec = "udp6", "fd31::2", "::"
	}
	pc, err := nstest.ListenPacketIn(ns, network, net.JoinHostPort(local, "0"))
	if err != nil {
		return nil, err
	}
	a := &udpAssoc{pc: pc.(*net.UDPConn)}
	port := uint16(0)
	if !o.portZero {
		port = a.pc.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	a.res, err = socksDo(ctx, ns, socksRequest{proxy: o.proxy, user: o.user, pass: o.pass, cmd: 3,
		target: netip.AddrPortFrom(netip.MustParseAddr(unspec), port).String()})
	if err != nil {
		pc.Close()
		return nil, err
	}
	a.relay = a.res.bound
	return a, nil
}

// close ends the association (by closing the control connection) and the
// client socket. Idempotent.
func (a *udpAssoc) close() {
	if a.res.conn != nil {
		a.res.conn.Close()
	}
	a.pc.Close()
}

// closeControl closes only the control connection.
func (a *udpAssoc) closeControl() { a.res.conn.Close() }

// client is the control connection's address as the daemon logs it.
func (a *udpAssoc) client() string { return a.res.localAddr }

// udpPacket builds a client datagram: RSV, FRAG, then the address of dst
// (ATYP 1, 4 or 3 as connectRequest chooses), then payload.
func udpPacket(dst string, frag byte, payload []byte) []byte {
	req, err := connectRequest(socksRequest{target: dst})
	if err != nil {
		panic(fmt.Sprintf("udpPacket(%q): %v", dst, err))
	}
	return append(append([]byte{0, 0, frag}, req[3:]...), payload...)
}

func (a *udpAssoc) send(dst string, payload []byte) error {
	return a.sendRaw(udpPacket(dst, 0, payload))
}

func (a *udpAssoc) sendRaw(b []byte) error {
	_, err := a.pc.WriteToUDPAddrPort(b, a.relay)
	return err
}

// udpReply is a datagram the relay sent to the client.
type udpReply struct {
	raw     []byte
	atyp    byte
	src     netip.AddrPort // source named in the header
	payload []byte
}

var errNoDatagram = errors.New("no datagram")

// recv reads one datagram within timeout and parses its SOCKS header
// strictly. A timeout returns errNoDatagram.
func (a *udpAssoc) recv(timeout time.Duration) (udpReply, error) {
	buf := make([]byte, 65535)
	_ = a.pc.SetReadDeadline(time.Now().Add(timeout))
	n, from, err := a.pc.ReadFromUDPAddrPort(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return udpReply{}, errNoDatagram
	}
	if err != nil {
		return udpReply{}, err
	}
	if from.Addr().Unmap() != a.relay.Addr() || from.Port() != a.relay.Port() {
		return udpReply{}, fmt.Errorf("datagram from %s, not from the relay %s", from, a.relay)
	}
	return parseUDPReply(buf[:n])
}

func parseUDPReply(b []byte) (udpReply, error) {
	r := udpReply{raw: b}
	if len(b) < 4 || b[0] != 0 || b[1] != 0 || b[2] != 0 {
		return r, fmt.Errorf("reply header % x: want RSV 0 0, FRAG 0", b[:min(len(b), 4)])
	}
	r.atyp = b[3]
	var l int
	switch r.atyp {
	case 1:
		l = 4
	case 4:
		l = 16
	default:
		return r, fmt.Errorf("reply ATYP %#x, want 1 or 4", r.atyp)
	}
	if len(b) < 4+l+2 {
		return r, fmt.Errorf("reply of %d bytes: truncated header", len(b))
	}
	ip, _ := netip.AddrFromSlice(b[4 : 4+l])
	r.src = netip.AddrPortFrom(ip, uint16(b[4+l])<<8|uint16(b[5+l]))
	r.payload = b[6+l:]
	return r, nil
}

// echo sends payload to dst and returns the reply to it: the datagram
// whose echoed payload is exactly payload (others are an error).
func (a *udpAssoc) echo(dst string, payload string) (udpReply, netip.AddrPort, error) {
	if err := a.send(dst, []byte(payload)); err != nil {
		return udpReply{}, netip.AddrPort{}, err
	}
	r, err := a.recv(3 * time.Second)
	if err != nil {
		return r, netip.AddrPort{}, fmt.Errorf("echo of %q via %s: %w", payload, dst, err)
	}
	seen, got, err := parseEcho(r.payload)
	if err == nil && got != payload {
		err = fmt.Errorf("echo of %q via %s returned %q", payload, dst, got)
	}
	return r, seen, err
}

// pyUDPScript sends each "host|port|payload" argument through a PySocks
// UDP socket and waits for the echo of that payload (resending up to three
// times), printing one JSON object per target. Proxy errors exit with 3
// and "<ExceptionClass>: <message>" on stderr.
const pyUDPScript = `
import json, socket, socks, sys
proxy_host, proxy_port, user, pw = sys.argv[1:5]
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, proxy_host, int(proxy_port), username=user, password=pw)
s.settimeout(2)
out = []
try:
    for t in sys.argv[5:]:
        host, port, payload = t.split("|", 2)
        for attempt in range(1, 4):
            s.sendto(payload.encode(), (host, int(port)))
            try:
                while True:
                    data, frm = s.recvfrom(65535)
                    if data.decode().endswith("|" + payload):
                        break
            except socket.timeout:
                continue
            break
        else:
            sys.exit("no echo for " + t)
        out.append({"from_host": frm[0], "from_port": frm[1], "data": data.decode(), "attempts": attempt})
except socks.ProxyError as e:
    sys.stderr.write("%s: %s\n" % (type(e).__name__, e))
    sys.exit(3)
finally:
    s.close()
print(json.dumps(out))
`

type pyUDPResult struct {
	FromHost string `json:"from_host"`
	FromPort int    `json:"from_port"`
	Data     string `json:"data"`
	Attempts int    `json:"attempts"`
}

// pythonUDP runs pyUDPScript in ns against the IPv4 listener. exit is the
// script's exit status (0 with results, 3 for a proxy error).
func pythonUDP(tb testing.TB, ns, user, pass string, targets ...string) (res []pyUDPResult, stderr string, exit int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	args := append([]string{"netns", "exec", ns, "/usr/bin/python3", "-c", pyUDPScript, proxyV4, "1080", user, pass}, targets...)
	out, errOut, err := nstest.Run(ctx, nil, "ip", args...)
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return nil, errOut, ee.ExitCode()
	default:
		tb.Fatalf("python3-socks UDP as %q: %v", user, err)
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res) != len(targets) {
		tb.Fatalf("python3-socks UDP as %q: output %q (%v), want %d results", user, out, err, len(targets))
	}
	return res, errOut, 0
}
