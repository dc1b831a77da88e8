package main

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

func TestReadReply(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want netip.AddrPort
		err  error // nil: success; errAny: any error
	}{
		{"ipv4", []byte{5, 0, 0, 1, 10, 0, 0, 1, 0x04, 0x38}, netip.MustParseAddrPort("10.0.0.1:1080"), nil},
		{"ipv6", append(append([]byte{5, 0, 0, 4}, netip.MustParseAddr("fd00::1").AsSlice()...), 0, 80), netip.MustParseAddrPort("[fd00::1]:80"), nil},
		{"name dropped", []byte{5, 0, 0, 3, 3, 'a', 'b', 'c', 0, 53}, netip.AddrPortFrom(netip.Addr{}, 53), nil},
		{"refused", []byte{5, 5, 0, 1, 0, 0, 0, 0, 0, 0}, netip.AddrPort{}, ReplyError(5)},
		{"bad version", []byte{4, 0, 0, 1, 0, 0, 0, 0, 0, 0}, netip.AddrPort{}, errAny},
		{"bad atyp", []byte{5, 0, 0, 9}, netip.AddrPort{}, errAny},
		{"short", []byte{5, 0, 0, 1, 10}, netip.AddrPort{}, errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readReply(bytes.NewReader(tt.in), make([]byte, 600))
			switch {
			case tt.err == nil && err != nil:
				t.Fatalf("error %v", err)
			case tt.err == errAny && err == nil, tt.err != nil && tt.err != errAny && !errors.Is(err, tt.err):
				t.Fatalf("error %v, want %v", err, tt.err)
			case tt.err == nil && got != tt.want:
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

var errAny = errors.New("any error")

func TestUDPHeaderRoundTrip(t *testing.T) {
	b := make([]byte, udpHeaderLen+3)
	copy(b[udpHeaderLen:], "abc")
	putUDPHeader(b, netip.MustParseAddrPort("10.233.9.9:5003"))
	p, err := udpPayload(b)
	if err != nil || string(p) != "abc" {
		t.Fatalf("payload %q, %v; want abc", p, err)
	}
	for name, bad := range map[string][]byte{
		"fragment":   {0, 0, 1, 1, 0, 0, 0, 0, 0, 0},
		"short name": {0, 0, 0, 3, 9, 'a'},
		"empty":      {},
	} {
		if _, err := udpPayload(bad); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// The client parses bytes the proxy sends: neither parser may panic.
func FuzzReadReply(f *testing.F) {
	f.Add([]byte{5, 0, 0, 1, 10, 0, 0, 1, 0x04, 0x38})
	f.Add([]byte{5, 0, 0, 3, 3, 'a', 'b', 'c', 0, 53})
	f.Fuzz(func(t *testing.T, b []byte) {
		readReply(bytes.NewReader(b), make([]byte, 600))
	})
}

func FuzzUDPPayload(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 10, 0, 0, 1, 0, 53, 'x'})
	f.Add([]byte{0, 0, 0, 3, 1, 'a', 0, 53})
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := udpPayload(b); err == nil && len(p) > len(b) {
			t.Fatalf("payload longer than the datagram")
		}
	})
}
