//go:build linux

package bind_test

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/bind"
	"golang.org/x/sys/unix"
)

func sockoptInt(tb testing.TB, c syscall.Conn, level, opt int) int {
	tb.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	var v int
	var gerr error
	rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) })
	if gerr != nil {
		tb.Fatalf("getsockopt %d/%d: %v", level, opt, gerr)
	}
	return v
}

// TestDialSource: the peer sees the source address, the socket defers its
// port choice to connect (IP_BIND_ADDRESS_NO_PORT), and carries the mark.
func TestDialSource(t *testing.T) {
	tests := []struct {
		name   string
		listen string
		d      bind.Dialer
	}{
		{"ipv4 source on lo", "127.0.0.1:0", bind.Dialer{Interface: "lo", Source4: netip.MustParseAddr("127.0.0.7")}},
		{"ipv6 source on lo", "[::1]:0", bind.Dialer{Interface: "lo", Source6: netip.MustParseAddr("::1")}},
		{"source without interface", "127.0.0.1:0", bind.Dialer{Source4: netip.MustParseAddr("127.0.0.9")}},
		{"mark", "127.0.0.1:0", bind.Dialer{Interface: "lo", Mark: 77}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.d.Mark != 0 && os.Geteuid() != 0 {
				t.Skip("SO_MARK needs CAP_NET_ADMIN")
			}
			ln := listenTCP(t, tt.listen)
			c, err := tt.d.DialTCP(ctxTimeout(t, 5*time.Second), addrPort(t, ln.Addr()))
			if err != nil {
				t.Fatalf("DialTCP: %v", err)
			}
			defer c.Close()
			s := acceptOne(t, ln)
			from := addrPort(t, s.RemoteAddr()).Addr()
			src := tt.d.SourceFor(from.Is4())
			if src.IsValid() && from != src {
				t.Errorf("peer saw %s, want %s", from, src)
			}
			noPort := sockoptInt(t, c, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT)
			if want := tt.d.HasSource(); (noPort == 1) != want {
				t.Errorf("IP_BIND_ADDRESS_NO_PORT = %d, want set %v", noPort, want)
			}
			if m := sockoptInt(t, c, unix.SOL_SOCKET, unix.SO_MARK); m != int(tt.d.Mark) {
				t.Errorf("SO_MARK = %d, want %d", m, tt.d.Mark)
			}
		})
	}
}

// TestSourceFamily: a source address of one family refuses sockets of the
// other instead of binding something else.
func TestSourceFamily(t *testing.T) {
	d := bind.Dialer{Source4: netip.MustParseAddr("127.0.0.1")}
	if _, err := d.ListenUDP(ctxTimeout(t, time.Second), "udp6"); !errors.Is(err, bind.ErrFamily) {
		t.Errorf("ListenUDP udp6 with an IPv4 source: %v, want ErrFamily", err)
	}
	if _, err := d.DialTCP(ctxTimeout(t, time.Second), netip.MustParseAddrPort("[::1]:9")); !errors.Is(err, bind.ErrFamily) {
		t.Errorf("DialTCP to IPv6 with an IPv4 source: %v, want ErrFamily", err)
	}
	u, err := d.ListenUDP(ctxTimeout(t, time.Second), "udp4")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if got := u.LocalAddr().(*net.UDPAddr).AddrPort().Addr(); got != d.Source4 {
		t.Errorf("UDP socket bound to %s, want %s", got, d.Source4)
	}
}

// TestListenTCP: the BIND socket listens on the interface, at the source
// address when there is one.
func TestListenTCP(t *testing.T) {
	d := bind.Dialer{Interface: "lo"}
	ln, err := d.ListenTCP(ctxTimeout(t, time.Second), netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if dev := boundDevice(t, ln); dev != "lo" {
		t.Errorf("SO_BINDTODEVICE = %q, want lo", dev)
	}
	d.Source4 = netip.MustParseAddr("127.0.0.5")
	ln2, err := d.ListenTCP(ctxTimeout(t, time.Second), netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	if got := addrPort(t, ln2.Addr()).Addr(); got != d.Source4 {
		t.Errorf("listening on %s, want the source %s", got, d.Source4)
	}
}

// TestDialBothFamilies: a Dialer with a source of each family (a mixed
// pool) binds the one of the destination's family.
func TestDialBothFamilies(t *testing.T) {
	d := bind.Dialer{Interface: "lo", Source4: netip.MustParseAddr("127.0.0.8"), Source6: netip.MustParseAddr("::1")}
	for _, listen := range []string{"127.0.0.1:0", "[::1]:0"} {
		ln := listenTCP(t, listen)
		c, err := d.DialTCP(ctxTimeout(t, 5*time.Second), addrPort(t, ln.Addr()))
		if err != nil {
			t.Fatalf("DialTCP %s: %v", listen, err)
		}
		s := acceptOne(t, ln)
		from := addrPort(t, s.RemoteAddr()).Addr()
		if want := d.SourceFor(from.Is4()); from != want {
			t.Errorf("%s: peer saw %s, want %s", listen, from, want)
		}
		c.Close()
	}
}

// TestFreeBind: FreeBind sets IP_FREEBIND (IPV6_FREEBIND on IPv6) so an
// address held by no interface can be bound; without it the bind fails.
func TestFreeBind(t *testing.T) {
	foreign := netip.MustParseAddr("192.0.2.77") // TEST-NET-1: on no interface
	plain := bind.Dialer{Source4: foreign}
	if _, err := plain.ListenUDP(ctxTimeout(t, time.Second), "udp4"); err == nil {
		t.Fatal("binding an address of no interface without FreeBind succeeded")
	}
	free := plain
	free.FreeBind = true
	u, err := free.ListenUDP(ctxTimeout(t, time.Second), "udp4")
	if err != nil {
		t.Fatalf("FreeBind: %v", err)
	}
	defer u.Close()
	if got := u.LocalAddr().(*net.UDPAddr).AddrPort().Addr(); got != foreign {
		t.Errorf("bound to %s, want %s", got, foreign)
	}
	if v := sockoptInt(t, u, unix.IPPROTO_IP, unix.IP_FREEBIND); v != 1 {
		t.Errorf("IP_FREEBIND = %d, want 1", v)
	}
	free6 := bind.Dialer{Source6: netip.MustParseAddr("2001:db8::77"), FreeBind: true}
	u6, err := free6.ListenUDP(ctxTimeout(t, time.Second), "udp6")
	if err != nil {
		t.Skipf("no IPv6 here: %v", err)
	}
	defer u6.Close()
	if v := sockoptInt(t, u6, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND); v != 1 {
		t.Errorf("IPV6_FREEBIND = %d, want 1", v)
	}
}

func TestAddrOwner(t *testing.T) {
	if name, ok := bind.AddrOwner(netip.MustParseAddr("127.0.0.1")); !ok || name != "lo" {
		t.Errorf("owner of 127.0.0.1: %q %v, want lo", name, ok)
	}
	if name, ok := bind.AddrOwner(netip.MustParseAddr("192.0.2.254")); ok {
		t.Errorf("owner of 192.0.2.254: %q, want none", name)
	}
}
