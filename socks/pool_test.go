package socks

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/source"
)

func pool(tb testing.TB, s ...string) *source.Pool {
	tb.Helper()
	ps := make([]netip.Prefix, len(s))
	for i, x := range s {
		ps[i] = netip.MustParsePrefix(x)
	}
	return source.New(ps)
}

// TestPlanPool: the interface a pool leaves by and the errors that make
// its flows 0x03.
func TestPlanPool(t *testing.T) {
	a1, a2 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	b6 := netip.MustParseAddr("2001:db8::1")
	owners := map[netip.Addr]string{a1: "eth1", a2: "eth1", b6: "eth2"}
	tests := []struct {
		name      string
		eg        Egress
		local     bool
		wantIface string
		freeBind  bool
		wantErr   error
	}{
		{name: "held addresses", eg: Egress{Sources: pool(t, "10.0.0.1/32", "10.0.0.2/32")}, wantIface: "eth1"},
		{name: "address of no interface", eg: Egress{Sources: pool(t, "10.0.0.1/32", "10.0.0.9/32", "10.0.0.10/32")}, wantErr: bind.ErrNoSource},
		{name: "spread over two", eg: Egress{Sources: pool(t, "10.0.0.1/32", "2001:db8::1/128")}, wantErr: bind.ErrPoolSpread},
		{name: "routed prefix on its interface", eg: Egress{Interfaces: []string{"eth3"}, Sources: pool(t, "2001:db8:5::/80")}, local: true, wantIface: "eth3", freeBind: true},
		{name: "no local route", eg: Egress{Interfaces: []string{"eth3"}, Sources: pool(t, "2001:db8:5::/80")}, wantErr: bind.ErrNoLocalRoute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := fakeHost(nil, owners)
			st.IsLocal = func(netip.Addr) bool { return tt.local }
			var err error
			var p plan
			// Several flows, so that a random pick cannot hide an error.
			for range 20 {
				if p, err = st.planEgress(&tt.eg, netip.Addr{}, "t", new(atomic.Uint64), flowID{}); err != nil {
					break
				}
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || replyFor(err) != RepNetworkUnreachable {
					t.Fatalf("err = %v (reply %#x), want %v and 0x03", err, replyFor(err), tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r := p.routes[0]
			if r.Interface != tt.wantIface || r.FreeBind != tt.freeBind || !r.HasSource() {
				t.Errorf("route %+v, want interface %s, FreeBind %v", r, tt.wantIface, tt.freeBind)
			}
		})
	}
}

// TestRotationSeeds: user and session rotation pin an address, flow does
// not, and a session-less login of a session user rotates per flow.
func TestRotationSeeds(t *testing.T) {
	st := fakeHost(nil, nil)
	st.IsLocal = func(netip.Addr) bool { return true }
	pick := func(rot config.Rotation, id flowID) netip.Addr {
		eg := Egress{Interfaces: []string{"eth1"}, Sources: pool(t, "2001:db8::/80"), Rotation: rot}
		p, err := st.planEgress(&eg, netip.Addr{}, "t", nil, id)
		if err != nil {
			t.Fatal(err)
		}
		return p.routes[0].Source6
	}
	distinct := func(rot config.Rotation, id flowID) int {
		seen := map[netip.Addr]bool{}
		for range 20 {
			seen[pick(rot, id)] = true
		}
		return len(seen)
	}
	if n := distinct(config.RotationUser, flowID{user: "alice"}); n != 1 {
		t.Errorf("user rotation: %d addresses for one user", n)
	}
	if n := distinct(config.RotationSession, flowID{user: "alice", session: "a"}); n != 1 {
		t.Errorf("session rotation: %d addresses for one session", n)
	}
	if n := distinct(config.RotationSession, flowID{user: "alice"}); n < 19 {
		t.Errorf("session rotation without a key: %d addresses in 20 flows, want flow behaviour", n)
	}
	if n := distinct(config.RotationFlow, flowID{user: "alice"}); n < 19 {
		t.Errorf("flow rotation: %d addresses in 20 flows", n)
	}
	if pick(config.RotationUser, flowID{user: "alice"}) == pick(config.RotationUser, flowID{user: "bob"}) {
		t.Error("two users share an address of a /80")
	}
	if pick(config.RotationSession, flowID{user: "alice", session: "a"}) == pick(config.RotationSession, flowID{user: "alice", session: "b"}) {
		t.Error("two sessions share an address of a /80")
	}
}

// TestSplitSession: which login names carry a session key.
func TestSplitSession(t *testing.T) {
	sess := Egress{Sources: pool(t, "2001:db8::/80"), Rotation: config.RotationSession, SessionSeparator: "-session-"}
	own := Egress{Sources: pool(t, "2001:db8::/80"), Rotation: config.RotationSession, SessionSeparator: "+"}
	st := &Settings{
		Users: map[string]User{
			"alice":           {Egress: sess},
			"alice-session-x": {Egress: sess}, // a longer user wins its own name
			"x":               {Egress: Egress{Interfaces: []string{"eth1"}}},
			"carol":           {Egress: own},
			"dave":            {}, // listener's egress
		},
	}
	lis := &Listener{Egress: sess}
	tests := []struct {
		lis       *Listener
		name      string
		user, key string
	}{
		{nil, "alice", "alice", ""},
		{nil, "alice-session-a", "alice", "a"},
		{nil, "alice-session-a-session-b", "alice", "a-session-b"},
		{nil, "alice-session-x", "alice-session-x", ""},
		{nil, "alice-session-x-session-k", "alice-session-x", "k"},
		{nil, "alice-session-", "alice-session-", ""},
		{nil, "x-session-y", "x-session-y", ""},
		{nil, "carol+k", "carol", "k"},
		{nil, "carol-session-k", "carol-session-k", ""},
		{nil, "dave-session-k", "dave-session-k", ""},
		{lis, "dave-session-k", "dave", "k"},
		{nil, "nobody-session-k", "nobody-session-k", ""},
	}
	for _, tt := range tests {
		u, k := st.splitSession(tt.lis, tt.name)
		if u != tt.user || k != tt.key {
			t.Errorf("%q (listener %v): %q %q, want %q %q", tt.name, tt.lis != nil, u, k, tt.user, tt.key)
		}
	}
}

// TestPlanPoolAllocs: planning a flow's source from a /80 allocates
// nothing beyond what every plan does (its route slice), for flow and
// session rotation.
func TestPlanPoolAllocs(t *testing.T) {
	st := fakeHost(nil, nil)
	st.IsLocal = func(netip.Addr) bool { return true }
	for _, rot := range []config.Rotation{config.RotationFlow, config.RotationSession} {
		eg := Egress{Interfaces: []string{"eth1"}, Sources: pool(t, "2001:db8::/80", "10.0.0.0/28"), Rotation: rot}
		id := flowID{user: "alice", session: "k1"}
		n := testing.AllocsPerRun(500, func() {
			if _, err := st.planPool(&eg, id); err != nil {
				t.Fatal(err)
			}
		})
		if n != 0 {
			t.Errorf("%v: %v allocations per planPool", rot, n)
		}
	}
}
