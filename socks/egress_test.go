package socks

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/source"
)

// fakeHost gives planEgress a host whose interface states and address
// owners the test decides.
func fakeHost(down map[string]error, owners map[netip.Addr]string) *Settings {
	return &Settings{
		CheckInterface: func(name string) error {
			if err, ok := down[name]; ok {
				return &bind.Error{Interface: name, Err: err}
			}
			return nil
		},
		AddrOwner: func(a netip.Addr) (string, bool) {
			n, ok := owners[a]
			return n, ok
		},
	}
}

// one is the pool of a single source_ip.
func one(a netip.Addr) *source.Pool {
	return source.New([]netip.Prefix{netip.PrefixFrom(a, a.BitLen())})
}

func routeNames(p plan) []string {
	var out []string
	for _, r := range p.routes {
		out = append(out, r.Interface)
	}
	return out
}

func TestPlanEgress(t *testing.T) {
	local := netip.MustParseAddr("10.0.0.5")
	src := netip.MustParseAddr("10.0.0.9")
	owners := map[netip.Addr]string{local: "eth1", src: "eth2"}
	tests := []struct {
		name    string
		eg      Egress
		down    map[string]error
		want    []string
		skipped int
		wantErr error
	}{
		{name: "kernel routing", eg: Egress{}, want: []string{""}},
		{name: "one interface", eg: Egress{Interfaces: []string{"eth1"}}, want: []string{"eth1"}},
		{name: "one interface down", eg: Egress{Interfaces: []string{"eth1"}}, down: map[string]error{"eth1": bind.ErrInterfaceDown}, skipped: 1, wantErr: bind.ErrInterfaceDown},
		{name: "failover in order", eg: Egress{Interfaces: []string{"a", "b", "c"}}, want: []string{"a", "b", "c"}},
		{name: "failover skips down", eg: Egress{Interfaces: []string{"a", "b", "c"}}, down: map[string]error{"a": bind.ErrInterfaceDown}, want: []string{"b", "c"}, skipped: 1},
		{name: "failover skips missing", eg: Egress{Interfaces: []string{"a", "b"}}, down: map[string]error{"a": bind.ErrNoInterface}, want: []string{"b"}, skipped: 1},
		{name: "all down", eg: Egress{Interfaces: []string{"a", "b"}}, down: map[string]error{"a": bind.ErrNoInterface, "b": bind.ErrInterfaceDown}, skipped: 2, wantErr: bind.ErrNoInterface},
		{name: "ingress", eg: Egress{Ingress: true}, want: []string{"eth1"}},
		{name: "ingress down", eg: Egress{Ingress: true}, down: map[string]error{"eth1": bind.ErrInterfaceDown}, wantErr: bind.ErrInterfaceDown},
		{name: "source", eg: Egress{Sources: one(src)}, want: []string{"eth2"}},
		{name: "source not on host", eg: Egress{Sources: one(netip.MustParseAddr("192.0.2.1"))}, wantErr: bind.ErrNoSource},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := fakeHost(tt.down, owners)
			p, err := st.planEgress(&tt.eg, local, "target", new(atomic.Uint64), flowID{})
			if tt.wantErr != nil {
				var be *bind.Error
				if !errors.Is(err, tt.wantErr) || !errors.As(err, &be) {
					t.Fatalf("err = %v, want a *bind.Error wrapping %v", err, tt.wantErr)
				}
				if got := replyFor(err); got != RepNetworkUnreachable {
					t.Errorf("reply %#x, want 0x03", got)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if got := routeNames(p); !slices.Equal(got, tt.want) {
				t.Errorf("routes %q, want %q", got, tt.want)
			}
			if len(p.skipped) != tt.skipped {
				t.Errorf("skipped %q, want %d", p.skipped, tt.skipped)
			}
		})
	}
}

func TestPlanEgressSourceAndMark(t *testing.T) {
	src := netip.MustParseAddr("fd00::9")
	st := fakeHost(nil, map[netip.Addr]string{src: "eth3"})
	p, err := st.planEgress(&Egress{Sources: one(src), Mark: 7}, netip.Addr{}, "", new(atomic.Uint64), flowID{})
	if err != nil {
		t.Fatal(err)
	}
	if want := (bind.Dialer{Interface: "eth3", Source6: src, Mark: 7}); len(p.routes) != 1 || p.routes[0] != want {
		t.Fatalf("routes %+v, want [%+v]", p.routes, want)
	}
}

// TestRoundRobin: flows take the usable interfaces in turn, evenly, and
// a down interface is left out of the rotation rather than handing its
// turns to its neighbour.
func TestRoundRobin(t *testing.T) {
	down := map[string]error{}
	st := fakeHost(down, nil)
	eg := Egress{Interfaces: []string{"a", "b", "c"}, Strategy: RoundRobin, Turn: new(atomic.Uint64)}
	count := func(n int) map[string]int {
		got := map[string]int{}
		for range n {
			p, err := st.planEgress(&eg, netip.Addr{}, "t", nil, flowID{})
			if err != nil {
				t.Fatal(err)
			}
			got[p.routes[0].Interface]++
			if len(p.routes) != len(eg.Interfaces)-len(down) {
				t.Fatalf("routes %v: the others must stay as fallbacks", routeNames(p))
			}
		}
		return got
	}
	if got := count(99); got["a"] != 33 || got["b"] != 33 || got["c"] != 33 {
		t.Errorf("spread %v, want 33 each", got)
	}
	down["b"] = bind.ErrInterfaceDown
	if got := count(100); got["a"] != 50 || got["c"] != 50 || got["b"] != 0 {
		t.Errorf("spread with b down %v, want a=50 c=50", got)
	}
}

// TestHash: a target keeps its interface; losing an interface moves only
// the targets it had.
func TestHash(t *testing.T) {
	down := map[string]error{}
	st := fakeHost(down, nil)
	eg := Egress{Interfaces: []string{"a", "b", "c"}, Strategy: Hash}
	pick := func(key string) string {
		p, err := st.planEgress(&eg, netip.Addr{}, key, new(atomic.Uint64), flowID{})
		if err != nil {
			t.Fatal(err)
		}
		return p.routes[0].Interface
	}
	before := map[string]string{}
	used := map[string]int{}
	for i := range 300 {
		key := fmt.Sprintf("host%d.example", i)
		before[key] = pick(key)
		used[before[key]]++
		if again := pick(key); again != before[key] {
			t.Fatalf("%s: %s then %s", key, before[key], again)
		}
	}
	for _, n := range []string{"a", "b", "c"} {
		if used[n] < 60 {
			t.Errorf("interface %s got %d of 300 targets: %v", n, used[n], used)
		}
	}
	down["b"] = bind.ErrInterfaceDown
	for key, was := range before {
		now := pick(key)
		if was != "b" && now != was {
			t.Errorf("%s moved from %s to %s though %s is up", key, was, now, was)
		}
		if now == "b" {
			t.Errorf("%s still on the down interface", key)
		}
	}
}

// TestEgressFailureFallsThrough: a route whose interface cannot be bound
// is skipped for the next; the flow log names both.
func TestEgressFailureFallsThrough(t *testing.T) {
	st := testSettings(t)
	// The check passes for "ghost0" (the fake host says it is up), but
	// binding to it fails: the dial falls through to lo.
	st.CheckInterface = func(string) error { return nil }
	st.Users["alice"] = User{Egress: Egress{Interfaces: []string{"ghost0", "lo"}}}
	env := startServer(t, st)
	echo := echoServer(t)
	r := dialRaw(t, env.addr)
	r.login("alice", alicePass)
	if rep, _ := r.connect(echo); rep != RepSucceeded {
		t.Fatalf("reply %#x", rep)
	}
	r.c.Close()
	waitFor(t, 2*time.Second, "flow line", func() bool { return len(env.flowLines()) == 1 })
	m := env.flowLines()[0].ContextMap()
	if m["interface"] != "lo" {
		t.Errorf("interface %v, want lo", m["interface"])
	}
	if sk, _ := m["skipped"].([]any); len(sk) != 1 || !strings.HasPrefix(fmt.Sprint(sk[0]), "ghost0: ") {
		t.Errorf("skipped %v, want one entry for ghost0", m["skipped"])
	}
}

// TestListenerSettings: a listener without authentication serves anyone
// in allow_clients with the listener's egress, closes others at accept,
// and the same server still asks for passwords on its plain listener.
func TestListenerSettings(t *testing.T) {
	st := testSettings(t)
	st.Listeners = map[string]*Listener{
		"open":   {NoAuth: true, AllowClients: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Egress: Egress{Interfaces: []string{"lo"}}},
		"closed": {NoAuth: true, AllowClients: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		"nosuch": {NoAuth: true, Egress: Egress{Interfaces: []string{"nosuch0"}}},
	}
	env := startServer(t, st)
	addrs := map[string]string{}
	for name := range st.Listeners {
		addrs[name] = serveListener(t, env.srv, name)
	}
	echo := echoServer(t)

	r := dialRaw(t, addrs["open"])
	r.send(5, 1, methodNoAuth)
	r.expect(5, methodNoAuth)
	if rep, _ := r.connect(echo); rep != RepSucceeded {
		t.Fatalf("open listener: reply %#x", rep)
	}

	r = dialRaw(t, addrs["closed"])
	r.send(5, 1, methodNoAuth)
	r.expectClosed()

	r = dialRaw(t, addrs["nosuch"])
	r.send(5, 1, methodNoAuth)
	r.expect(5, methodNoAuth)
	if rep, _ := r.connect(echo); rep != RepNetworkUnreachable {
		t.Fatalf("listener egress on a missing interface: reply %#x, want 0x03", rep)
	}

	r = dialRaw(t, env.addr)
	r.send(5, 1, methodNoAuth)
	r.expect(5, methodNoAccept)
}

// serveListener serves a new loopback listener as name on srv.
func serveListener(tb testing.TB, srv *Server, name string) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeListener(ln, name)
	}()
	tb.Cleanup(func() { srv.Close(); <-done })
	return ln.Addr().String()
}
