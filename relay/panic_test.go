package relay_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/relay"
	"golang.org/x/time/rate"
)

// panicDeadline is a context whose Deadline panics. A paced direction asks
// its limiter to wait, and the limiter asks the context for its deadline:
// the panic happens inside the relay's copier goroutine, as a bug there
// would.
type panicDeadline struct{ context.Context }

func (panicDeadline) Deadline() (time.Time, bool) { panic("injected relay panic") }

// TestRelayPanic: a panic in one direction ends that flow alone — both of
// its connections closed, done called once with a *PanicError carrying the
// stack — and the process goes on (the test binary would die otherwise);
// goleak in TestMain checks that no goroutine is left.
func TestRelayPanic(t *testing.T) {
	client, proxyClient := tcpPair(t)
	proxyUp, upstream := tcpPair(t)
	done := make(chan relay.Result, 2)
	lim := relay.Limits{Up: rate.NewLimiter(1<<20, 64<<10)}
	relay.StartLimited(panicDeadline{context.Background()}, proxyClient, proxyUp, 0, lim, relay.Counts{}, func(r relay.Result) { done <- r })
	if _, err := client.Write([]byte("trigger")); err != nil {
		t.Fatal(err)
	}
	var res relay.Result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not finish after the panic")
	}
	var pe *relay.PanicError
	if !errors.As(res.Err, &pe) {
		t.Fatalf("Result.Err = %v, want a *relay.PanicError", res.Err)
	}
	if pe.Value != "injected relay panic" || !strings.Contains(string(pe.Stack), "relay.(*Flow).run") {
		t.Errorf("PanicError value %v, stack:\n%s\nwant the injected value and the copier in the stack", pe.Value, pe.Stack)
	}
	for name, c := range map[string]*net.TCPConn{"client": client, "upstream": upstream} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 16)); err == nil {
			t.Errorf("%s end: read %d bytes, want the relay to have closed its side", name, n)
		}
	}
	select {
	case r := <-done:
		t.Fatalf("done called twice: %+v", r)
	case <-time.After(100 * time.Millisecond):
	}
}
