package socks

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/policy"
	"go.uber.org/zap/zapcore"
)

// bind sends a BIND request naming peer and returns the first reply.
func (r *rawClient) bind(peer netip.AddrPort) (byte, netip.AddrPort) {
	r.tb.Helper()
	r.send(append([]byte{5, cmdBind, 0}, appendAddr(nil, peer)...)...)
	return r.readReply()
}

// peerFrom connects to dst from the local address src, as a BIND peer.
func peerFrom(tb testing.TB, src string, dst netip.AddrPort) (*net.TCPConn, error) {
	tb.Helper()
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", dst.String())
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn), nil
}

// TestBind: both replies carry the right addresses, a connection from an
// address the client did not name is closed while the wait goes on, and
// data then flows both ways.
func TestBind(t *testing.T) {
	env := startServer(t, testSettings(t))
	r := dialRaw(t, env.addr)
	r.login("alice", alicePass)
	rep, bnd := r.bind(netip.MustParseAddrPort("127.0.0.1:21"))
	if rep != RepSucceeded || bnd.Addr() != netip.MustParseAddr("127.0.0.1") || bnd.Port() == 0 {
		t.Fatalf("first reply %#x %v", rep, bnd)
	}

	// Another address: accepted by the kernel, closed by the server.
	stranger, err := peerFrom(t, "127.0.0.2", bnd)
	if err != nil {
		t.Fatal(err)
	}
	stranger.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := stranger.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("stranger: read %d, %v; want closed", n, err)
	}

	peer, err := peerFrom(t, "127.0.0.1", bnd)
	if err != nil {
		t.Fatal(err)
	}
	rep, from := r.readReply()
	if want := addrPortOf(peer.LocalAddr()); rep != RepSucceeded || from != want {
		t.Fatalf("second reply %#x %v, want 0x00 %v", rep, from, want)
	}
	peer.Write([]byte("from peer"))
	r.expect([]byte("from peer")...)
	r.send([]byte("from client")...)
	got := make([]byte, len("from client"))
	peer.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "from client" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	peer.Close()
	r.c.Close()
	waitFor(t, 2*time.Second, "flow line", func() bool { return len(env.flowLines()) == 1 })
	m := env.flowLines()[0].ContextMap()
	if m["outcome"] != outcomeOK || m["interface"] != "lo" || m["remote"] != from.String() {
		t.Errorf("flow line %v", m)
	}
}

// TestBindAnyPeer: with the zero address named, any peer is taken, and
// the listening address is one of the egress interface's.
func TestBindAnyPeer(t *testing.T) {
	env := startServer(t, testSettings(t))
	r := dialRaw(t, env.addr)
	r.login("bob", bobPass)
	rep, bnd := r.bind(netip.MustParseAddrPort("0.0.0.0:0"))
	if rep != RepSucceeded || !bnd.Addr().IsLoopback() {
		t.Fatalf("first reply %#x %v", rep, bnd)
	}
	if _, err := peerFrom(t, "127.0.0.3", bnd); err != nil {
		t.Fatal(err)
	}
	if rep, from := r.readReply(); rep != RepSucceeded || from.Addr() != netip.MustParseAddr("127.0.0.3") {
		t.Fatalf("second reply %#x %v", rep, from)
	}
}

func TestBindFailures(t *testing.T) {
	st := testSettings(t)
	st.BindTimeout = 300 * time.Millisecond
	env := startServer(t, st)
	envDeny := startServer(t, func() *Settings {
		s := testSettings(t)
		s.Policy = policy.New([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, false)
		return s
	}())

	t.Run("no peer within bind_timeout", func(t *testing.T) {
		r := dialRaw(t, env.addr)
		r.login("alice", alicePass)
		if rep, _ := r.bind(netip.MustParseAddrPort("127.0.0.1:21")); rep != RepSucceeded {
			t.Fatalf("first reply %#x", rep)
		}
		start := time.Now()
		if rep, _ := r.readReply(); rep != RepTTLExpired {
			t.Fatalf("second reply %#x, want 0x06", rep)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("timeout took %v", d)
		}
		r.expectClosed()
	})
	t.Run("client leaves while waiting", func(t *testing.T) {
		r := dialRaw(t, env.addr)
		r.login("alice", alicePass)
		_, bnd := r.bind(netip.MustParseAddrPort("127.0.0.1:21"))
		r.c.Close()
		waitFor(t, 2*time.Second, "listening socket closed", func() bool {
			c, err := net.DialTimeout("tcp", bnd.String(), time.Second)
			if err == nil {
				c.Close()
			}
			return err != nil
		})
	})
	t.Run("client writes before the second reply", func(t *testing.T) {
		r := dialRaw(t, env.addr)
		r.login("alice", alicePass)
		_, bnd := r.bind(netip.MustParseAddrPort("127.0.0.1:21"))
		r.send('x')
		if rep, _ := r.readReply(); rep != RepGeneralFailure {
			t.Fatalf("second reply %#x, want 0x01", rep)
		}
		r.expectClosed()
		if c, err := net.DialTimeout("tcp", bnd.String(), time.Second); err == nil {
			c.Close()
			t.Error("listening socket still open")
		}
		waitFor(t, 2*time.Second, "flow line", func() bool {
			for _, e := range env.flowLines() {
				if e.ContextMap()["outcome"] == outcomePeerReset && e.Level == zapcore.InfoLevel {
					return true
				}
			}
			return false
		})
	})
	t.Run("missing interface", func(t *testing.T) {
		r := dialRaw(t, env.addr)
		r.login("carol", "carol-pw")
		if rep, _ := r.bind(netip.MustParseAddrPort("127.0.0.1:21")); rep != RepNetworkUnreachable {
			t.Fatalf("reply %#x, want 0x03", rep)
		}
	})
	t.Run("denied peer", func(t *testing.T) {
		r := dialRaw(t, envDeny.addr)
		r.login("alice", alicePass)
		if rep, _ := r.bind(netip.MustParseAddrPort("127.0.0.1:21")); rep != RepNotAllowed {
			t.Fatalf("reply %#x, want 0x02", rep)
		}
	})
}
