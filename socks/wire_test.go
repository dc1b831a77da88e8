package socks

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
)

func TestReadRequest(t *testing.T) {
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)
	tests := []struct {
		name    string
		in      []byte
		want    Request
		wantRep byte // reply carried by a *requestError; 0 with wantErr means "close, no reply"
		wantErr bool
	}{
		{"ipv4", []byte{5, 1, 0, 1, 10, 0, 0, 1, 0x1f, 0x90},
			Request{Cmd: cmdConnect, Dst: Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 8080}}, 0, false},
		{"ipv6", append(append([]byte{5, 1, 0, 4}, netip.MustParseAddr("2001:db8::1").AsSlice()...), 0, 80),
			Request{Cmd: cmdConnect, Dst: Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 80}}, 0, false},
		{"ipv4-mapped ipv6 is unmapped", append(append([]byte{5, 1, 0, 4}, netip.MustParseAddr("::ffff:127.0.0.1").AsSlice()...), 0, 80),
			Request{Cmd: cmdConnect, Dst: Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 80}}, 0, false},
		{"domain", append([]byte{5, 1, 0, 3, 11}, append([]byte("example.org"), 1, 187)...),
			Request{Cmd: cmdConnect, Dst: Addr{Name: "example.org", Port: 443}}, 0, false},
		{"domain trailing dot", append([]byte{5, 1, 0, 3, 12}, append([]byte("example.org."), 0, 80)...),
			Request{Cmd: cmdConnect, Dst: Addr{Name: "example.org.", Port: 80}}, 0, false},
		{"domain 253 bytes", append([]byte{5, 1, 0, 3, byte(len(long))}, append([]byte(long), 0, 80)...),
			Request{Cmd: cmdConnect, Dst: Addr{Name: long, Port: 80}}, 0, false},
		{"ip literal as domain", append([]byte{5, 1, 0, 3, 9}, append([]byte("127.0.0.1"), 0, 80)...),
			Request{Cmd: cmdConnect, Dst: Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 80}}, 0, false},
		{"bracketed ipv6 literal as domain", append([]byte{5, 1, 0, 3, 5}, append([]byte("[::1]"), 0, 80)...),
			Request{Cmd: cmdConnect, Dst: Addr{IP: netip.MustParseAddr("::1"), Port: 80}}, 0, false},
		{"udp associate", []byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0},
			Request{Cmd: cmdUDPAssociate, Dst: Addr{IP: netip.MustParseAddr("0.0.0.0")}}, 0, false},
		{"bind", []byte{5, 2, 0, 1, 1, 2, 3, 4, 0, 1},
			Request{Cmd: cmdBind, Dst: Addr{IP: netip.MustParseAddr("1.2.3.4"), Port: 1}}, 0, false},
		{"wrong version", []byte{4, 1, 0, 1, 10, 0, 0, 1, 0, 80}, Request{}, 0, true},
		{"unknown command", []byte{5, 9, 0, 1, 10, 0, 0, 1, 0, 80}, Request{Cmd: 9}, RepCommandUnsupported, true},
		{"unknown atyp", []byte{5, 1, 0, 2, 10, 0, 0, 1, 0, 80}, Request{Cmd: cmdConnect}, RepAddrUnsupported, true},
		{"domain length 0", []byte{5, 1, 0, 3, 0, 0, 80}, Request{Cmd: cmdConnect, Dst: Addr{Port: 80}}, RepHostUnreachable, true},
		{"domain with NUL", append([]byte{5, 1, 0, 3, 5}, append([]byte("a\x00.bc"), 0, 80)...),
			Request{Cmd: cmdConnect, Dst: Addr{Name: "a\x00.bc", Port: 80}}, RepHostUnreachable, true},
		{"domain with space", append([]byte{5, 1, 0, 3, 3}, append([]byte("a b"), 0, 80)...),
			Request{Cmd: cmdConnect, Dst: Addr{Name: "a b", Port: 80}}, RepHostUnreachable, true},
		{"domain empty label", append([]byte{5, 1, 0, 3, 4}, append([]byte("a..b"), 0, 80)...),
			Request{Cmd: cmdConnect, Dst: Addr{Name: "a..b", Port: 80}}, RepHostUnreachable, true},
		{"domain label 64 bytes", append([]byte{5, 1, 0, 3, 64}, append([]byte(strings.Repeat("x", 64)), 0, 80)...),
			Request{Cmd: cmdConnect, Dst: Addr{Name: strings.Repeat("x", 64), Port: 80}}, RepHostUnreachable, true},
		{"domain 255 bytes", append([]byte{5, 1, 0, 3, 255}, append([]byte(strings.Repeat("a.", 127)+"a"), 0, 80)...),
			Request{Cmd: cmdConnect, Dst: Addr{Name: strings.Repeat("a.", 127) + "a", Port: 80}}, RepHostUnreachable, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readRequest(bytes.NewReader(tt.in))
			var re *requestError
			switch {
			case !tt.wantErr && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr && err == nil:
				t.Fatalf("no error, got %+v", got)
			case tt.wantErr && tt.wantRep != 0 && (!errors.As(err, &re) || re.reply != tt.wantRep):
				t.Fatalf("error %v: want reply %#x", err, tt.wantRep)
			case tt.wantErr && tt.wantRep == 0 && errors.As(err, &re):
				t.Fatalf("error %v carries a reply; want a plain close", err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestTruncated feeds every proper prefix of valid messages: each must
// fail with an unexpected-EOF style error and no reply.
func TestTruncated(t *testing.T) {
	msgs := []struct {
		name  string
		in    []byte
		parse func(io.Reader) error
	}{
		{"greeting", []byte{5, 2, 0, 2}, func(r io.Reader) error { _, err := readGreeting(r); return err }},
		{"userpass", append(append([]byte{1, 5}, "alice"...), append([]byte{3}, "pwd"...)...),
			func(r io.Reader) error { _, _, err := readUserPass(r); return err }},
		{"request ipv4", []byte{5, 1, 0, 1, 10, 0, 0, 1, 0, 80}, func(r io.Reader) error { _, err := readRequest(r); return err }},
		{"request ipv6", append(append([]byte{5, 1, 0, 4}, make([]byte, 16)...), 0, 80), func(r io.Reader) error { _, err := readRequest(r); return err }},
		{"request domain", append([]byte{5, 1, 0, 3, 3}, "a.b\x00\x50"...), func(r io.Reader) error { _, err := readRequest(r); return err }},
	}
	for _, m := range msgs {
		if err := m.parse(bytes.NewReader(m.in)); err != nil {
			t.Fatalf("%s: full message fails: %v", m.name, err)
		}
		for n := 0; n < len(m.in); n++ {
			err := m.parse(bytes.NewReader(m.in[:n]))
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("%s truncated at %d: err = %v, want EOF", m.name, n, err)
			}
			var re *requestError
			if errors.As(err, &re) {
				t.Errorf("%s truncated at %d: got a reply %#x, want a close", m.name, n, re.reply)
			}
		}
	}
}

func TestReadGreetingAndUserPass(t *testing.T) {
	if _, err := readGreeting(bytes.NewReader([]byte{4, 1, 0})); !errors.Is(err, errVersion) {
		t.Errorf("SOCKS4 greeting: err = %v, want errVersion", err)
	}
	m, err := readGreeting(bytes.NewReader([]byte{5, 0}))
	if err != nil || len(m) != 0 {
		t.Errorf("zero methods: %v %v", m, err)
	}
	if _, err := readGreeting(bytes.NewReader([]byte{5, 3, 0, 2})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("more methods than sent: err = %v", err)
	}
	u, p, err := readUserPass(bytes.NewReader([]byte{1, 0, 0}))
	if err != nil || u != "" || p != "" {
		t.Errorf("empty user and password: %q %q %v", u, p, err)
	}
	long := strings.Repeat("u", 255)
	u, p, err = readUserPass(bytes.NewReader(append(append([]byte{1, 255}, long...), append([]byte{255}, long...)...)))
	if err != nil || u != long || p != long {
		t.Errorf("255-byte user and password: %v", err)
	}
	if _, _, err := readUserPass(bytes.NewReader([]byte{5, 1, 'a', 1, 'b'})); err == nil {
		t.Error("sub-negotiation version 5 accepted")
	}
}

func TestWriteReply(t *testing.T) {
	tests := []struct {
		name string
		bnd  netip.AddrPort
		want []byte
	}{
		{"none", netip.AddrPort{}, []byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"ipv4", netip.MustParseAddrPort("10.1.2.3:1080"), []byte{5, 0, 0, 1, 10, 1, 2, 3, 4, 56}},
		{"mapped ipv4", netip.MustParseAddrPort("[::ffff:10.1.2.3]:80"), []byte{5, 0, 0, 1, 10, 1, 2, 3, 0, 80}},
		{"ipv6", netip.MustParseAddrPort("[2001:db8::2]:443"),
			append(append([]byte{5, 0, 0, 4}, netip.MustParseAddr("2001:db8::2").AsSlice()...), 1, 187)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeReply(&b, RepSucceeded, tt.bnd); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b.Bytes(), tt.want) {
				t.Fatalf("got % x, want % x", b.Bytes(), tt.want)
			}
		})
	}
}

// FuzzReadRequest checks that no input panics, and that every accepted
// request round-trips through appendAddr.
func FuzzReadRequest(f *testing.F) {
	f.Add([]byte{5, 1, 0, 1, 10, 0, 0, 1, 0, 80})
	f.Add(append([]byte{5, 1, 0, 3, 11}, append([]byte("example.org"), 1, 187)...))
	f.Add(append(append([]byte{5, 3, 0, 4}, make([]byte, 16)...), 0, 0))
	f.Add([]byte{5, 1, 0, 3, 255})
	f.Add([]byte{5, 9, 0, 9})
	f.Fuzz(func(t *testing.T, in []byte) {
		req, err := readRequest(bytes.NewReader(in))
		if err != nil {
			return
		}
		if req.Dst.Name != "" {
			if checkHostname(req.Dst.Name) != nil {
				t.Fatalf("accepted bad name %q", req.Dst.Name)
			}
			return
		}
		enc := appendAddr(nil, netip.AddrPortFrom(req.Dst.IP, req.Dst.Port))
		back, err := readAddr(bytes.NewReader(enc[1:]), enc[0])
		if err != nil || back.IP != req.Dst.IP || back.Port != req.Dst.Port {
			t.Fatalf("round trip %+v -> % x -> %+v, %v", req.Dst, enc, back, err)
		}
	})
}
