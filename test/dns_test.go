//go:build linux

package test

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// dnsServer is the authoritative server for ".test" in U. It records which
// source address asked for which name, so tests can check that a user's
// lookups left the proxy through that user's interface.
type dnsServer struct {
	pc net.PacketConn
	ln net.Listener

	mu      sync.Mutex
	queries []dnsQuery
}

type dnsQuery struct {
	name string // lower case, fully qualified ("whoami.test.")
	src  netip.Addr
}

var dnsZone = map[string]struct{ a, aaaa netip.Addr }{
	"whoami.test.": {netip.MustParseAddr(svcV4), netip.MustParseAddr(svcV6)},
	"v4only.test.": {a: netip.MustParseAddr(svcV4)},
	"loop.test.":   {a: netip.MustParseAddr("127.0.0.1")},
}

// lookupZone also answers any "*.whoami.test." like whoami.test: tests use
// fresh names so that a resolver cache in the daemon cannot hide a query.
func lookupZone(name string) (struct{ a, aaaa netip.Addr }, bool) {
	if strings.HasSuffix(name, ".whoami.test.") {
		name = "whoami.test."
	}
	rr, ok := dnsZone[name]
	return rr, ok
}

func startDNS(ns string) (*dnsServer, error) {
	addr := net.JoinHostPort(svcV4, "53")
	pc, err := nstest.ListenPacketIn(ns, "udp", addr)
	if err != nil {
		return nil, err
	}
	ln, err := nstest.ListenIn(ns, "tcp", addr)
	if err != nil {
		pc.Close()
		return nil, err
	}
	s := &dnsServer{pc: pc, ln: ln}
	go s.serveUDP()
	go s.serveTCP()
	return s, nil
}

func (s *dnsServer) close() {
	s.pc.Close()
	s.ln.Close()
}

// mark returns a position in the query log; sourcesSince reads after it.
func (s *dnsServer) mark() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queries)
}

// sourcesSince returns the distinct source addresses that asked for name
// (any type) after mark, sorted.
func (s *dnsServer) sourcesSince(mark int, name string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var srcs []string
	for _, q := range s.queries[mark:] {
		if q.name == name && !slices.Contains(srcs, q.src.String()) {
			srcs = append(srcs, q.src.String())
		}
	}
	slices.Sort(srcs)
	return srcs
}

func (s *dnsServer) serveUDP() {
	buf := make([]byte, 65535)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		src := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
		if resp, ok := s.answer(buf[:n], src); ok {
			_, _ = s.pc.WriteTo(resp, from)
		}
	}
}

func (s *dnsServer) serveTCP() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			src := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			for {
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				req := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(c, req); err != nil {
					return
				}
				resp, ok := s.answer(req, src)
				if !ok {
					return
				}
				out := binary.BigEndian.AppendUint16(nil, uint16(len(resp)))
				if _, err := c.Write(append(out, resp...)); err != nil {
					return
				}
			}
		}()
	}
}

// answer builds the reply; ok is false for unparsable queries (dropped).
func (s *dnsServer) answer(req []byte, src netip.Addr) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil || h.Response {
		return nil, false
	}
	q, err := p.Question()
	if err != nil {
		return nil, false
	}
	name := strings.ToLower(q.Name.String())
	s.mu.Lock()
	s.queries = append(s.queries, dnsQuery{name: name, src: src})
	s.mu.Unlock()

	m := dnsmessage.Message{
		Header: dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true,
			RecursionDesired: h.RecursionDesired, RecursionAvailable: true},
		Questions: []dnsmessage.Question{q},
	}
	rr, known := lookupZone(name)
	hdr := dnsmessage.ResourceHeader{Name: q.Name, Type: q.Type, Class: dnsmessage.ClassINET, TTL: 5}
	switch {
	case !known || q.Class != dnsmessage.ClassINET:
		m.RCode = dnsmessage.RCodeNameError
	case q.Type == dnsmessage.TypeA && rr.a.IsValid():
		m.Answers = append(m.Answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.AResource{A: rr.a.As4()}})
	case q.Type == dnsmessage.TypeAAAA && rr.aaaa.IsValid():
		m.Answers = append(m.Answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.AAAAResource{AAAA: rr.aaaa.As16()}})
	}
	// Known name without a record of that type: NOERROR, no answers (NODATA).
	resp, err := m.Pack()
	return resp, err == nil
}
