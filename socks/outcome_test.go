package socks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/net/proxy"
)

// TestRelayOutcome: the kernel's "the other end reset or closed" errors
// are the peer's doing (reset); anything else ends as relay_error.
func TestRelayOutcome(t *testing.T) {
	opErr := func(op string, errno syscall.Errno) error {
		return &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, errno)}
	}
	for _, tt := range []struct {
		name string
		err  error
		want string
	}{
		{"read reset", opErr("read", syscall.ECONNRESET), outcomePeerReset},
		{"write after close", opErr("write", syscall.EPIPE), outcomePeerReset},
		{"shutdown of a reset socket", opErr("shutdown", syscall.ENOTCONN), outcomePeerReset},
		{"splice reset", os.NewSyscallError("splice", syscall.ECONNRESET), outcomePeerReset},
		{"aborted", fmt.Errorf("write reply: %w", opErr("write", syscall.ECONNABORTED)), outcomePeerReset},
		{"out of memory", os.NewSyscallError("pipe2", syscall.ENOMEM), outcomeRelayError},
		{"bad descriptor", opErr("read", syscall.EBADF), outcomeRelayError},
		{"other", errors.New("splice moved no bytes to the socket"), outcomeRelayError},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := relayOutcome(tt.err); got != tt.want {
				t.Errorf("relayOutcome(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}

// resetServer answers each connection with answer once it has read ask.
// With reset it then waits for the client's "bye" and aborts the
// connection (SO_LINGER 0: an RST instead of a FIN). Without, it reads to
// EOF and closes once release is closed, so that a client which
// half-closed and then reset is still in the flow when the relay passes
// the target's FIN on.
func resetServer(tb testing.TB, ask, answer []byte, reset bool, release <-chan struct{}) netip.AddrPort {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(c, make([]byte, len(ask))); err != nil {
					return
				}
				if _, err := c.Write(answer); err != nil {
					return
				}
				if !reset {
					io.Copy(io.Discard, c)
					select {
					case <-release:
					case <-time.After(10 * time.Second):
					}
					return
				}
				io.ReadFull(c, make([]byte, 3))
				c.(*net.TCPConn).SetLinger(0)
			})
		}
	})
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// recordingDialer is the forward dialer of golang.org/x/net/proxy that
// keeps the TCP connection it opened, so the test can abort it: the
// SOCKS client wraps it in a type of its own.
type recordingDialer struct{ conn *net.TCPConn }

func (d *recordingDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := net.DialTimeout(network, addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	d.conn = c.(*net.TCPConn)
	return c, nil
}

// TestPeerResetOutcome: a flow whose client or target resets its
// connection after every byte was delivered ends with outcome reset, the
// bytes counted, never relay_error. The client is golang.org/x/net/proxy,
// the client of the report; the resets are SO_LINGER 0 closes.
func TestPeerResetOutcome(t *testing.T) {
	ask := bytes.Repeat([]byte("q"), 3000)
	answer := bytes.Repeat([]byte("a"), 200_000)
	for _, tt := range []struct {
		name string
		// clientReset: the client aborts once it has read the answer;
		// else the target aborts once the client said "bye".
		clientReset bool
		// halfClose: the client half-closes after its request first.
		halfClose bool
	}{
		{name: "client resets after reading", clientReset: true},
		{name: "client half-closes then resets", clientReset: true, halfClose: true},
		{name: "target resets after the client read", clientReset: false},
		{name: "client half-closes, target resets", clientReset: false, halfClose: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := startServer(t, testSettings(t))
			release := make(chan struct{})
			target := resetServer(t, ask, answer, !tt.clientReset, release)
			fwd := &recordingDialer{}
			d, err := proxy.SOCKS5("tcp", env.addr, &proxy.Auth{User: "alice", Password: alicePass}, fwd)
			if err != nil {
				t.Fatal(err)
			}
			c, err := d.(proxy.ContextDialer).DialContext(context.Background(), "tcp", target.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(ask); err != nil {
				t.Fatal(err)
			}
			if tt.halfClose && tt.clientReset {
				fwd.conn.CloseWrite()
			}
			got := make([]byte, len(answer))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, answer) {
				t.Fatalf("read answer: %v", err)
			}
			if tt.clientReset {
				fwd.conn.SetLinger(0)
				fwd.conn.Close()
				// After a half-close the relay no longer reads the
				// client: it meets the reset when it passes the
				// target's FIN on (shutdown: ENOTCONN).
				close(release)
			} else {
				c.Write([]byte("bye"))
				if tt.halfClose {
					fwd.conn.CloseWrite()
				}
				// The target's RST reaches the client through the
				// relay as a close; wait for it.
				io.Copy(io.Discard, c)
			}
			line := waitFlowLine(t, env)
			m := line.ContextMap()
			if m["outcome"] != outcomePeerReset {
				t.Errorf("outcome %v (error %v), want %q", m["outcome"], m["error"], outcomePeerReset)
			}
			up := int64(len(ask))
			if !tt.clientReset {
				up += 3
			}
			if m["bytes_down"] != int64(len(answer)) || m["bytes_up"] != up {
				t.Errorf("bytes up %v down %v, want %d and %d", m["bytes_up"], m["bytes_down"], up, len(answer))
			}
		})
	}
}

// waitFlowLine waits for the one flow line of a test's single flow.
func waitFlowLine(tb testing.TB, env *testEnv) observer.LoggedEntry {
	tb.Helper()
	waitFor(tb, 5*time.Second, "flow line", func() bool { return len(env.flowLines()) > 0 })
	return env.flowLines()[0]
}
