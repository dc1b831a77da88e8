package socks

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
)

// withAccount gives user a fresh accounting counter in st.
func withAccount(st *Settings, user string) *accounting.Counter {
	c := &accounting.Counter{}
	u := st.Users[user]
	u.Account = c
	st.Users[user] = u
	return c
}

// wantCounts waits (bounded) until c holds up and down bytes; a counter fed
// only at the end of a flow, or by the wrong direction, never does.
func wantCounts(t *testing.T, c *accounting.Counter, up, down int64) {
	t.Helper()
	waitFor(t, 5*time.Second, "accounting counts", func() bool { return c.Up.Load() == up && c.Down.Load() == down })
}

// TestAccountingEveryCommand: CONNECT (with data sent before the reply),
// BIND and UDP ASSOCIATE add their payload to the user's counter while
// the flow runs, each direction on its own side, another user's counter
// untouched.
func TestAccountingEveryCommand(t *testing.T) {
	st := udpSettings(t)
	alice, bob := withAccount(st, "alice"), withAccount(st, "bob")
	env := startServer(t, st)

	// CONNECT: the request, then 100 bytes at once (early data), then an
	// echo of 1000; counted before the flow ends.
	target := echoServer(t)
	r := dialRaw(t, env.addr)
	r.login("alice", alicePass)
	r.send(append(append([]byte{5, cmdConnect, 0}, appendAddr(nil, target)...), bytes.Repeat([]byte("e"), 100)...)...)
	if rep, _ := r.readReply(); rep != RepSucceeded {
		t.Fatalf("CONNECT reply %#x", rep)
	}
	r.send(bytes.Repeat([]byte("x"), 1000)...)
	if _, err := io.ReadFull(r.c, make([]byte, 1100)); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, alice, 1100, 1100)

	// BIND: 9 bytes from the peer, 11 from the client.
	b := dialRaw(t, env.addr)
	b.login("alice", alicePass)
	rep, bnd := b.bind(netip.MustParseAddrPort("127.0.0.1:0"))
	if rep != RepSucceeded {
		t.Fatalf("BIND reply %#x", rep)
	}
	peer, err := peerFrom(t, "127.0.0.1", bnd)
	if err != nil {
		t.Fatal(err)
	}
	if rep, _ := b.readReply(); rep != RepSucceeded {
		t.Fatalf("BIND second reply %#x", rep)
	}
	peer.Write([]byte("from peer"))
	b.expect([]byte("from peer")...)
	b.send([]byte("from client")...)
	peer.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(peer, make([]byte, 11)); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, alice, 1100+11, 1100+9)

	// UDP: payload only, not the SOCKS header.
	echo := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	u := associate(t, env, "bob", bobPass)
	for _, n := range []int{1, 500, 1400} {
		u.send(echo.addr(), bytes.Repeat([]byte("u"), n))
		if _, _, err := u.recv(2 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	wantCounts(t, bob, 1901, 1901)
	if alice.Up.Load() != 1111 || alice.Down.Load() != 1109 {
		t.Errorf("alice's counter moved with bob's traffic: %d up %d down", alice.Up.Load(), alice.Down.Load())
	}
}

// TestAccountingHTTP: forwarded HTTP requests are counted as they cross
// the upstream connection (heads included). (CONNECT tunnels go through
// the relay, as SOCKS ones; the 403 over quota is tested end to end.)
func TestAccountingHTTP(t *testing.T) {
	st := testSettings(t)
	st.Protocols = ProtoSOCKS5 | ProtoHTTP
	alice := withAccount(st, "alice")
	env := startServer(t, st)
	body := strings.Repeat("b", 30000)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	}))
	t.Cleanup(origin.Close)
	proxyURL, _ := url.Parse("http://alice:" + url.QueryEscape(alicePass) + "@" + env.addr)
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: 10 * time.Second}
	t.Cleanup(client.CloseIdleConnections)
	resp, err := client.Get(origin.URL + "/page")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != body {
		t.Fatalf("got %d bytes, status %s", len(got), resp.Status)
	}
	// The request head went up; the response (head and body) came down.
	waitFor(t, 5*time.Second, "forwarded request counted", func() bool {
		up, down := alice.Up.Load(), alice.Down.Load()
		return up > 50 && up < 1000 && down > int64(len(body)) && down < int64(len(body))+1000
	})
}
