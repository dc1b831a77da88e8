package socks

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/policy"
)

// TestDefaultDenyThroughServer: with the default deny list, requests for
// the addresses the list gained and for loopback behind NAT64 or 6to4 are
// refused with 0x02 before anything is dialled, and UDP datagrams to
// multicast groups are dropped as denied. Every egress here is lo: a
// request the policy let through would not leave the host.
func TestDefaultDenyThroughServer(t *testing.T) {
	st := udpSettings(t)
	st.Policy = policy.New(config.DefaultDeny, false)
	env := startServer(t, st)
	for _, target := range []string{
		"100.100.100.200:80",        // Alibaba Cloud metadata
		"168.63.129.16:80",          // Azure WireServer
		"[64:ff9b::7f00:1]:80",      // 127.0.0.1 through NAT64
		"[64:ff9b:1::a9fe:a9fe]:80", // 169.254.169.254 through local-use NAT64
		"[2002:7f00:1::1]:80",       // 127.0.0.1 through 6to4
		"[::ffff:169.254.169.254]:80",
		"224.0.0.251:5353", // mDNS group
	} {
		r := dialRaw(t, env.addr)
		r.login("alice", alicePass)
		ap := netip.MustParseAddrPort(target)
		enc := appendAddr(nil, ap)
		if ap.Addr().Is6() && !ap.Addr().Is4In6() {
			enc = append(append([]byte{atypIPv6}, ap.Addr().AsSlice()...), byte(ap.Port()>>8), byte(ap.Port()))
		}
		r.send(append([]byte{5, cmdConnect, 0}, enc...)...)
		if rep, _ := r.readReply(); rep != RepNotAllowed {
			t.Errorf("CONNECT %s: reply %#x, want %#x", target, rep, RepNotAllowed)
		}
	}

	u := associate(t, env, "alice", alicePass)
	u.send(netip.MustParseAddrPort("224.0.0.251:5353"), []byte("mdns"))
	u.sendRaw(append(append([]byte{0, 0, 0, atypIPv6}, netip.MustParseAddr("ff02::fb").AsSlice()...), append([]byte{0x14, 0xe9}, "mdns6"...)...))
	time.Sleep(100 * time.Millisecond)
	u.ctl.c.Close()
	line := waitAssocLog(t, env)
	if d, _ := line["dropped"].(map[string]any); d["denied"] != int64(2) {
		t.Errorf("association dropped %v, want denied: 2 (the two multicast datagrams)", line["dropped"])
	}
}
