//go:build linux

package relay_test

import (
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/relay"
)

// copiers counts the goroutines running a relay direction.
func copiers() int {
	buf := make([]byte, 1<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "relay.(*Flow).run(")
}

// waitCopiers waits until at most n relay directions have a goroutine.
func waitCopiers(tb testing.TB, n int) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for copiers() > n {
		if time.Now().After(deadline) {
			tb.Fatalf("%d relay directions still hold a goroutine, want at most %d", copiers(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// echoByte sends one byte each way through f and checks it arrives.
func echoByte(tb testing.TB, f *flow, b byte) {
	tb.Helper()
	got := make([]byte, 1)
	for _, p := range [][2]interface {
		Write([]byte) (int, error)
		Read([]byte) (int, error)
	}{{f.client, f.upstream}, {f.upstream, f.client}} {
		if _, err := p[0].Write([]byte{b}); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(p[1].(io.Reader), got); err != nil || got[0] != b {
			tb.Fatalf("read %q, %v; want %q", got, err, b)
		}
	}
}

// TestQuietFlowsHoldNoGoroutine: a tunnel left quiet gives up both its
// goroutines (and their stacks), and still carries data both ways, and a
// half-close, when its sockets wake up.
func TestQuietFlowsHoldNoGoroutine(t *testing.T) {
	const n = 20
	base := copiers()
	flows := make([]*flow, n)
	for i := range flows {
		flows[i] = startRelay(t, time.Minute)
		echoByte(t, flows[i], 'a')
	}
	waitCopiers(t, base)
	for round, b := range []byte("xyz") {
		for _, f := range flows {
			echoByte(t, f, b)
		}
		waitCopiers(t, base)
		t.Logf("round %d: every direction parked again", round)
	}
	// Half-close from the client while parked: the upstream sees EOF and
	// can still answer, then its close ends the flow.
	for _, f := range flows {
		f.client.CloseWrite()
		if n, err := f.upstream.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("upstream read %d, %v after the client's half-close, want EOF", n, err)
		}
		if _, err := f.upstream.Write([]byte("late")); err != nil {
			t.Fatal(err)
		}
		f.upstream.CloseWrite()
		got, err := io.ReadAll(f.client)
		if err != nil || string(got) != "late" {
			t.Fatalf("client read %q, %v after the half-close, want %q", got, err, "late")
		}
		r := f.wait(t, 5*time.Second)
		if r.Err != nil || r.Up != 4 || r.Down != 8 {
			t.Fatalf("result %+v, want no error, 4 bytes up, 8 down", r)
		}
	}
}

// TestCloseParkedFlow: Flow.Close ends a flow whose directions are both
// parked (no goroutine would otherwise see its sockets closed).
func TestCloseParkedFlow(t *testing.T) {
	base := copiers()
	client, proxyClient := tcpPair(t)
	proxyUp, upstream := tcpPair(t)
	done := make(chan relay.Result, 1)
	fl := relay.Start(proxyClient, proxyUp, time.Minute, relay.Counts{}, func(r relay.Result) { done <- r })
	echoByte(t, &flow{client: client, upstream: upstream}, 'a')
	waitCopiers(t, base)
	fl.Close()
	select {
	case r := <-done:
		if r.Err != nil || r.Idle || r.Up != 1 || r.Down != 1 {
			t.Fatalf("result %+v, want no error, 1 byte each way", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a closed parked flow did not end")
	}
	if n, err := client.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("client read %d, %v after Close, want the connection closed", n, err)
	}
}

// TestIdleTimeoutParked: the idle timeout ends a flow whose directions
// are parked.
func TestIdleTimeoutParked(t *testing.T) {
	f := startRelay(t, 700*time.Millisecond)
	echoByte(t, f, 'a')
	r := f.wait(t, 10*time.Second)
	if !r.Idle || r.Err != nil {
		t.Fatalf("result %+v, want ended idle without error", r)
	}
}
