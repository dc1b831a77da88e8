package socks

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/metrics"
	"go.uber.org/zap/zapcore"
)

// panicLine returns the context of the first panic log line, waiting for
// it.
func (e *testEnv) panicLine(tb testing.TB) map[string]any {
	tb.Helper()
	var f map[string]any
	waitFor(tb, 5*time.Second, "the panic log line", func() bool {
		for _, l := range e.logs.All() {
			if strings.HasPrefix(l.Message, "panic in a connection goroutine") {
				if l.Level != zapcore.ErrorLevel {
					tb.Errorf("panic logged at %v, want error", l.Level)
				}
				f = l.ContextMap()
				return true
			}
		}
		return false
	})
	return f
}

// TestPanicIsolation injects a panic into one connection's goroutines
// through the settings (an interface check that panics for one interface;
// a nil policy, dereferenced by the next datagram) and checks that only
// that connection ends: logged at error with the stack, counted in
// ifsocks_panics_total, closed, its slots given back, while another
// user's flow running through it all keeps working and new ones start.
// goleak (TestMain) checks that no goroutine is left behind.
func TestPanicIsolation(t *testing.T) {
	echo := echoServer(t)
	udpEcho := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	tests := []struct {
		name  string
		where string
		// trigger makes alice's connection panic.
		trigger func(t *testing.T, env *testEnv, settings func(testing.TB) *Settings)
	}{
		{"handshake", panicConn, func(t *testing.T, env *testEnv, _ func(testing.TB) *Settings) {
			r := dialRaw(t, env.addr)
			r.login("alice", alicePass)
			r.send(append([]byte{5, cmdConnect, 0}, appendAddr(nil, echo)...)...)
			r.expectClosed()
		}},
		{"http connect", panicHTTP, func(t *testing.T, env *testEnv, _ func(testing.TB) *Settings) {
			r := dialRaw(t, env.addr)
			auth := base64.StdEncoding.EncodeToString([]byte("alice:" + alicePass))
			fmt.Fprintf(r.c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", echo, echo, auth)
			if b, err := io.ReadAll(r.c); err != nil || len(b) != 0 {
				t.Fatalf("after the panic: read %q, %v; want the connection closed with nothing", b, err)
			}
		}},
		{"http forward dial", panicHTTPDial, func(t *testing.T, env *testEnv, _ func(testing.TB) *Settings) {
			r := dialRaw(t, env.addr)
			auth := base64.StdEncoding.EncodeToString([]byte("alice:" + alicePass))
			fmt.Fprintf(r.c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", echo, echo, auth)
			resp, err := http.ReadResponse(bufio.NewReader(r.c), nil)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode < 500 {
					t.Fatalf("forwarded request whose dial panicked: status %d, want a 5xx", resp.StatusCode)
				}
			}
		}},
		{"udp upstream", panicUDPUpstream, func(t *testing.T, env *testEnv, settings func(testing.TB) *Settings) {
			u := associate(t, env, "bob", bobPass)
			u.send(udpEcho.addr(), []byte("fine"))
			if got := <-udpEcho.got; string(got) != "fine" {
				t.Fatalf("echo got %q", got)
			}
			broken := settings(t)
			broken.Policy = nil
			env.srv.Update(broken)
			u.send(udpEcho.addr(), []byte("boom"))
			u.ctl.expectClosed()
			env.srv.Update(settings(t))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := metrics.New()
			settings := func(testing.TB) *Settings {
				st := udpSettings(t)
				st.Metrics = m
				st.Protocols = ProtoSOCKS5 | ProtoHTTP
				// alice leaves by "boom0", whose check panics.
				st.Users["alice"] = User{Egress: Egress{Interfaces: []string{"boom0"}}}
				st.CheckInterface = func(name string) error {
					if name == "boom0" {
						panic("injected panic for " + name)
					}
					return bind.CheckInterface(name)
				}
				return st
			}
			st := settings(t)
			env := startServer(t, st)

			// bob has a flow running through the panic.
			running := dialRaw(t, env.addr)
			running.login("bob", bobPass)
			if rep, _ := running.connect(echo); rep != RepSucceeded {
				t.Fatalf("bob's CONNECT: reply %#x", rep)
			}
			running.send('a')
			running.expect('a')

			tt.trigger(t, env, settings)

			f := env.panicLine(t)
			if f["where"] != tt.where {
				t.Errorf("panic line where=%v, want %s", f["where"], tt.where)
			}
			if s, _ := f["stack"].(string); !strings.Contains(s, "goroutine") || !strings.Contains(s, "socks.") {
				t.Errorf("panic line has no stack: %q", s)
			}
			if p, _ := f["panic"].(string); p == "" {
				t.Error("panic line does not carry the panic value")
			}
			if n := metricValue(t, m, "ifsocks_panics_total", `where="`+tt.where+`"`); n != 1 {
				t.Errorf("ifsocks_panics_total{where=%q} = %v, want 1", tt.where, n)
			}

			// The running flow is untouched, and the server serves.
			running.send('b')
			running.expect('b')
			n := dialRaw(t, env.addr)
			n.login("bob", bobPass)
			if rep, _ := n.connect(echo); rep != RepSucceeded {
				t.Fatalf("new CONNECT after the panic: reply %#x", rep)
			}
			n.c.Close()
			running.c.Close()
			waitFor(t, 5*time.Second, "every connection released", func() bool { return env.srv.ActiveConns() == 0 })
			env.srv.lim.flowMu.Lock()
			flows := env.srv.lim.flows
			env.srv.lim.flowMu.Unlock()
			if flows != 0 {
				t.Errorf("%d flows still counted after every connection ended, want 0", flows)
			}
		})
	}
}
