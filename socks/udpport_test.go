package socks

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
)

// TestUDPRequirePort: without udp_require_port, an association requested
// with DST.PORT 0 is claimed by the first datagram from the client's IP,
// whatever socket sends it (here a second socket on the same host, the
// attacker); with it, such a request gets 0x02 and a warning that says
// why, while a request naming its port works.
func TestUDPRequirePort(t *testing.T) {
	echo := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	hdr := append([]byte{0, 0, 0}, appendAddr(nil, echo.addr())...)
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	t.Run("default: first datagram claims it", func(t *testing.T) {
		env := startServer(t, udpSettings(t))
		r := dialRaw(t, env.addr)
		r.login("alice", alicePass)
		rep, relay := r.associate(netip.MustParseAddrPort("0.0.0.0:0"))
		if rep != RepSucceeded {
			t.Fatalf("reply %#x, want success (the default accepts port 0)", rep)
		}
		intruder := listen()
		intruder.WriteToUDPAddrPort(append(hdr, "intruder"...), relay)
		select {
		case got := <-echo.got:
			if string(got) != "intruder" {
				t.Fatalf("echo got %q", got)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the intruder's datagram was not relayed; the default no longer lets the first sender claim the association")
		}
	})

	t.Run("required", func(t *testing.T) {
		st := udpSettings(t)
		st.UDP.RequirePort = true
		env := startServer(t, st)
		r := dialRaw(t, env.addr)
		r.login("alice", alicePass)
		if rep, _ := r.associate(netip.MustParseAddrPort("0.0.0.0:0")); rep != RepNotAllowed {
			t.Fatalf("port 0 with udp_require_port: reply %#x, want %#x", rep, RepNotAllowed)
		}
		r.expectClosed()
		var line map[string]any
		for _, l := range env.flowLines() {
			if l.Level == zapcore.WarnLevel && l.ContextMap()["user"] == "alice" {
				line = l.ContextMap()
			}
		}
		if line == nil {
			t.Fatalf("no warn flow line for the refused association; lines: %v", env.flowLines())
		}
		if msg, _ := line["error"].(string); !strings.Contains(msg, "udp_require_port") || !strings.Contains(msg, "DST.PORT 0") {
			t.Errorf("log error %q, want it to name DST.PORT 0 and udp_require_port", msg)
		}
		if line["outcome"] != outcomeDenied || line["reply"] != uint8(RepNotAllowed) {
			t.Errorf("log outcome %v reply %v, want %s %d", line["outcome"], line["reply"], outcomeDenied, RepNotAllowed)
		}

		// Naming the port works, and only that port is relayed.
		u := associate(t, env, "alice", alicePass)
		intruder := listen()
		intruder.WriteToUDPAddrPort(append(hdr, "intruder"...), u.relay)
		u.send(echo.addr(), []byte("owner"))
		if got := <-echo.got; string(got) != "owner" {
			t.Fatalf("echo got %q, want only the owner's datagram", got)
		}
		echo.assertNothing(t, 200*time.Millisecond)
	})
}
