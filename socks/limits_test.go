package socks

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestMaxConnections: over the server's or a user's max_connections a
// request gets its reply code and a flow line with outcome "limit"; once a
// flow ends a new one is accepted. UDP associations count as flows.
func TestMaxConnections(t *testing.T) {
	tests := []struct {
		name            string
		server, alice   int
		overUDP         bool // the request over the limit is a UDP ASSOCIATE
		wantAlice       byte // reply to alice's request over the limit
		wantBob         byte // reply to bob's request at the same time
		wantLogErrorMsg string
	}{
		{"server", 2, 0, false, RepGeneralFailure, RepGeneralFailure, errServerConns.Error()},
		{"user", 0, 2, false, RepNotAllowed, RepSucceeded, errUserConns.Error()},
		{"user, UDP over the limit", 0, 2, true, RepNotAllowed, RepSucceeded, errUserConns.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := udpSettings(t)
			st.Limits.MaxConnections = tt.server
			st.Users["alice"] = User{Egress: Egress{Interfaces: []string{"lo"}}, MaxConnections: tt.alice}
			env := startServer(t, st)
			echo := echoServer(t)

			// alice holds a CONNECT and a UDP association.
			held := dialRaw(t, env.addr)
			held.login("alice", alicePass)
			if rep, _ := held.connect(echo); rep != RepSucceeded {
				t.Fatalf("first CONNECT: %#x", rep)
			}
			associate(t, env, "alice", alicePass)

			r := dialRaw(t, env.addr)
			r.login("alice", alicePass)
			var rep byte
			if tt.overUDP {
				rep, _ = r.associate(netip.MustParseAddrPort("0.0.0.0:0"))
			} else {
				rep, _ = r.connect(echo)
			}
			if rep != tt.wantAlice {
				t.Fatalf("alice over the limit: reply %#x, want %#x", rep, tt.wantAlice)
			}
			r.expectClosed()
			b := dialRaw(t, env.addr)
			b.login("bob", bobPass)
			if rep, _ := b.connect(echo); rep != tt.wantBob {
				t.Fatalf("bob: reply %#x, want %#x", rep, tt.wantBob)
			}
			if tt.wantBob == RepSucceeded {
				b.c.Close()
			}

			var limited []map[string]any
			for _, l := range env.flowLines() {
				if f := l.ContextMap(); f["outcome"] == outcomeLimit {
					limited = append(limited, f)
				}
			}
			if len(limited) < 1 || limited[0]["user"] != "alice" || limited[0]["reply"] != uint8(tt.wantAlice) {
				t.Fatalf("limit flow lines %v, want alice's first with reply %d", limited, tt.wantAlice)
			}
			if msg, _ := limited[0]["error"].(string); msg == "" || !strings.Contains(msg, tt.wantLogErrorMsg) {
				t.Errorf("limit line error %q, want it to say %q", msg, tt.wantLogErrorMsg)
			}

			// When the held CONNECT ends, alice gets a new one.
			held.c.Close()
			waitFor(t, 2*time.Second, "held flow released", func() bool {
				env.srv.lim.flowMu.Lock()
				defer env.srv.lim.flowMu.Unlock()
				return env.srv.lim.users["alice"] != nil && env.srv.lim.users["alice"].n == 1
			})
			n := dialRaw(t, env.addr)
			n.login("alice", alicePass)
			if rep, _ := n.connect(echo); rep != RepSucceeded {
				t.Fatalf("CONNECT after a flow ended: reply %#x", rep)
			}
		})
	}
}
