package socks

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
	"github.com/ifsocks/ifsocks/metrics"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestHandshakesPerIPv6Prefix: IPv6 clients are counted by /64 and by
// /56 (4 × max_handshakes_per_ip). In a namespace of its own, the server
// listens on ::1 and clients come from addresses in five /64s of one /56
// and from another /56: four /64s at their cap fill the /56, so a fifth
// /64 makes room by evicting the oldest silent handshake of the /56,
// while the other /56 is untouched and an honest login from yet another
// /64 of the full /56 succeeds.
func TestHandshakesPerIPv6Prefix(t *testing.T) {
	const perIP = 2
	ns := nstest.New(t, "h12a", "v6")
	ns.IP(t, "link", "set", "lo", "up")
	src := func(sub int) string { return fmt.Sprintf("fd12:0:0:%x::1", 0x100+sub) } // /56 fd12:0:0:100::/56
	other := "fd12:0:0:200::1"
	var addrs []string
	for sub := range 6 {
		addrs = append(addrs, src(sub)+"/128")
	}
	if err := ns.AddAddr("lo", append(addrs, other+"/128")...); err != nil {
		t.Fatal(err)
	}

	st := testSettings(t)
	st.HandshakeTimeout = 10 * time.Second
	st.Limits.MaxHandshakesPerIP = perIP
	st.Metrics = metrics.New()
	core, logs := observer.New(zapcore.DebugLevel)
	srv := New(zap.New(core), st)
	ln := ns.Listen(t, "tcp", "[::1]:0")
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	addr := ln.Addr().String()
	dial := func(from string) *rawClient {
		t.Helper()
		d := ns.Dialer(2 * time.Second)
		d.LocalAddr = from
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		t.Cleanup(func() { c.Close() })
		return &rawClient{tb: t, c: c}
	}
	evicted := func(reason string) float64 {
		return metricValue(t, st.Metrics, "ifsocks_handshakes_evicted_total", `reason="`+reason+`"`)
	}

	// /64s 0..3 fill their caps: 8 handshakes, the /56's cap.
	var first []*rawClient
	for sub := range 4 {
		for range perIP {
			first = append(first, dial(src(sub)))
		}
	}
	waitFor(t, 5*time.Second, "8 handshakes", func() bool { return srv.ActiveConns() == 4*perIP })
	o := dial(other)
	waitFor(t, 5*time.Second, "the other /56's handshake", func() bool { return srv.ActiveConns() == 4*perIP+1 })
	if n := evicted("handshakes_per_prefix") + evicted("handshakes_per_ip"); n != 0 {
		t.Fatalf("%v evictions before any cap was passed", n)
	}
	// A fifth /64 of the same /56: the /56's oldest silent handshake goes.
	dial(src(4))
	first[0].expectClosed()
	if n := evicted("handshakes_per_prefix"); n != 1 {
		t.Errorf("evicted for the /56: %v, want 1", n)
	}
	// An honest client from a sixth /64 logs in and CONNECTs (the
	// server's dials run outside the namespace, so the target is on the
	// test's own loopback).
	echo := echoServer(t)
	h := dial(src(5))
	h.login("alice", alicePass)
	if rep, _ := h.connect(echo); rep != RepSucceeded {
		t.Fatalf("honest client in the full /56: CONNECT reply %#x", rep)
	}
	h.send('p', 'i', 'n', 'g')
	h.expect('p', 'i', 'n', 'g')
	// The other /56 kept its handshake all along.
	o.send(5, 1, methodUserPass)
	o.expect(5, methodUserPass)
	lines := logs.FilterMessage("handshake closed to make room for a new connection").All()
	if len(lines) < 1 || lines[0].ContextMap()["client"] != "fd12:0:0:100::/56" {
		t.Errorf("eviction lines %v, want the first naming fd12:0:0:100::/56", lines)
	}
	t.Logf("evictions: per /56 %v, per /64 %v", evicted("handshakes_per_prefix"), evicted("handshakes_per_ip"))
}
