package socks

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTCPKeepAlive reads the kernel's own view of the proxy's two sockets
// of a relayed flow (/proc/net/tcp): with tcp_keepalive set, both have
// the keepalive timer armed to fire within that time; without it, neither
// has a timer, since the dialer and the listener no longer turn on Go's
// default keepalive.
func TestTCPKeepAlive(t *testing.T) {
	for _, tt := range []struct {
		name      string
		keepalive time.Duration
	}{
		{"off by default", 0},
		{"on when set", 30 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := testSettings(t)
			st.TCPKeepAlive = tt.keepalive
			env := startServer(t, st)
			echo := echoServer(t)
			c := dialRaw(t, env.addr)
			c.login("bob", bobPass)
			if rep, _ := c.connect(echo); rep != RepSucceeded {
				t.Fatalf("CONNECT reply %#x", rep)
			}
			// One round trip: the relay is running.
			c.send('x')
			c.expect('x')

			proxy := netip.MustParseAddrPort(env.addr)
			client := netip.MustParseAddrPort(c.c.LocalAddr().String())
			sockets := []struct {
				what          string
				local, remote netip.AddrPort // zero local: any
			}{
				{"client-facing socket", proxy, client},
				{"upstream socket", netip.AddrPort{}, echo},
			}
			for _, s := range sockets {
				// Until the last segments are acknowledged the
				// retransmit timer (1) hides the keepalive one.
				var timer int
				var when time.Duration
				waitFor(t, 3*time.Second, s.what+" without a retransmit timer", func() bool {
					timer, when = tcpTimer(t, s.local, s.remote)
					return timer != 1
				})
				switch {
				case tt.keepalive == 0 && timer != 0:
					t.Errorf("%s: timer %d (expires in %v), want none: keepalive is off", s.what, timer, when)
				case tt.keepalive > 0 && (timer != 2 || when <= 0 || when > tt.keepalive):
					t.Errorf("%s: timer %d expiring in %v, want the keepalive timer (2) within %v", s.what, timer, when, tt.keepalive)
				}
			}
		})
	}
}

// tcpTimer returns the timer column of the established IPv4 socket in
// /proc/net/tcp with the given remote address (and local, when valid):
// which timer is armed (0 none, 1 retransmit, 2 keepalive, 4 zero-window
// probe) and how long until it fires.
func tcpTimer(tb testing.TB, local, remote netip.AddrPort) (int, time.Duration) {
	tb.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 16<<20))
	sc.Scan() // header
	for sc.Scan() {
		// sl local rem st tx:rx tr:when ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[3] != "01" { // TCP_ESTABLISHED
			continue
		}
		if procAddr(tb, fields[2]) != remote || (local.IsValid() && procAddr(tb, fields[1]) != local) {
			continue
		}
		tr, when, ok := strings.Cut(fields[5], ":")
		if !ok {
			tb.Fatalf("timer column %q", fields[5])
		}
		timer, err1 := strconv.ParseInt(tr, 16, 32)
		ticks, err2 := strconv.ParseInt(when, 16, 64)
		if err1 != nil || err2 != nil {
			tb.Fatalf("timer column %q", fields[5])
		}
		// Printed in USER_HZ, 100 on Linux.
		return int(timer), time.Duration(ticks) * 10 * time.Millisecond
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	tb.Fatalf("no established socket %v -> %v in /proc/net/tcp", local, remote)
	return 0, 0
}

// procAddr parses "0100007F:1F90": the IPv4 address as a host-order
// (little-endian here) word, then the port, both in hex.
func procAddr(tb testing.TB, s string) netip.AddrPort {
	tb.Helper()
	ip, port, ok := strings.Cut(s, ":")
	b, err1 := hex.DecodeString(ip)
	p, err2 := strconv.ParseUint(port, 16, 16)
	if !ok || err1 != nil || err2 != nil || len(b) != 4 {
		tb.Fatalf("address %q in /proc/net/tcp", s)
	}
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], binary.LittleEndian.Uint32(b))
	return netip.AddrPortFrom(netip.AddrFrom4(a), uint16(p))
}
