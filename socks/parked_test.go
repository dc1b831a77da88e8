package socks

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// relayCopiers counts the goroutines running a relay direction.
func relayCopiers() int {
	buf := make([]byte, 1<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "relay.(*Flow).run(")
}

// TestCloseInterfaceParked: a quiet tunnel, whose relay holds no goroutine
// (its sockets wait in the relay's epoll set), is still cut at once when
// its interface goes away: the server closes it through the relay.
func TestCloseInterfaceParked(t *testing.T) {
	st := testSettings(t)
	env := startServer(t, st)
	echo := echoServer(t)
	alice := dialRaw(t, env.addr)
	alice.login("alice", alicePass)
	alice.connect(echo)
	alice.send('a')
	alice.expect('a')
	waitFor(t, 10*time.Second, "the relay's directions to park", func() bool { return relayCopiers() == 0 })
	alice.c.SetDeadline(time.Now().Add(5 * time.Second))
	if n := env.srv.CloseInterface("lo"); n != 1 {
		t.Fatalf("CloseInterface closed %d flows, want 1", n)
	}
	alice.expectClosed()
	waitFor(t, 5*time.Second, "flow log", func() bool { return len(env.flowLines()) == 1 })
	if f := env.flowLines()[0].ContextMap(); f["user"] != "alice" || f["outcome"] != outcomeIfaceLost {
		t.Fatalf("flow log %v", f)
	}
}
