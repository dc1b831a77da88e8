//go:build linux

package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/config"
	"go.uber.org/zap"
)

// Descriptor exhaustion by clients without credentials: the daemon runs as
// a child process with RLIMIT_NOFILE lowered to noFileChild (set by the
// child itself with setrlimit before it starts), and 20 client addresses
// open silent connections, 16 each (max_handshakes_per_ip), and keep
// opening more. With max_handshakes unset, the daemon caps handshakes at
// a quarter of its limit and evicts the oldest silent ones, so honest
// clients are served throughout and accept never fails; with
// max_handshakes = 0 (no server-wide cap, as before) the silent
// connections take every descriptor, accept fails with EMFILE and honest
// clients time out.

const (
	noFileChild    = 256
	noFileChildEnv = "IFSOCKS_TEST_NOFILE_CHILD" // the child's config path
	attackIPs      = 20
	attackPerIP    = 16
)

// TestNoFileDaemonChild is the child: it runs only when started by
// TestMaxHandshakesNoFile.
func TestNoFileDaemonChild(t *testing.T) {
	path := os.Getenv(noFileChildEnv)
	if path == "" {
		t.Skip("runs only as TestMaxHandshakesNoFile's child")
	}
	lim := syscall.Rlimit{Cur: noFileChild, Max: noFileChild}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	zc := zap.NewProductionConfig()
	zc.OutputPaths, zc.ErrorOutputPaths = []string{"stdout"}, []string{"stdout"}
	zc.Sampling = nil
	log, err := zc.Build()
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, Options{Path: path, Config: cfg, Log: log, Level: zc.Level}); err != nil {
		t.Fatal(err)
	}
}

func TestMaxHandshakesNoFile(t *testing.T) {
	if testing.Short() {
		t.Skip("a child daemon and hundreds of connections")
	}
	tests := []struct {
		name      string
		extra     string
		wantServe bool
	}{
		{"max_handshakes from RLIMIT_NOFILE", "", true},
		{"no server-wide cap (before)", "max_handshakes = 0\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
			target := echoServer(t, "127.0.0.1:0")
			path := filepath.Join(t.TempDir(), "config.toml")
			text := fmt.Sprintf("[server]\nlisten = [%q]\ndeny = []\ndeny_own_addresses = false\nhandshake_timeout = \"1m\"\nmax_handshakes_per_ip = %d\n%s\n%s",
				addr, attackPerIP, tt.extra, cheapUser(t))
			if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			child := startChild(t, path)
			started := child.waitLine(t, "ifsocks started")
			t.Logf("child daemon: RLIMIT_NOFILE %v, max_handshakes %v", started["nofile"], started["max_handshakes"])
			if want := float64(noFileChild / config.NoFileShareForHandshakes); tt.wantServe && started["max_handshakes"] != want {
				t.Fatalf("max_handshakes %v, want %v", started["max_handshakes"], want)
			}

			// The attack: every address fills its per-IP cap, then more
			// connections keep coming until the test ends.
			var held []net.Conn
			var mu sync.Mutex
			t.Cleanup(func() {
				mu.Lock()
				defer mu.Unlock()
				for _, c := range held {
					c.Close()
				}
			})
			silent := func(i int) {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(10+i%attackIPs))}, Timeout: time.Second}
				if c, err := d.Dial("tcp", addr); err == nil {
					mu.Lock()
					held = append(held, c)
					mu.Unlock()
				}
			}
			for i := range attackIPs * attackPerIP {
				silent(i)
			}
			stop := make(chan struct{})
			var flood sync.WaitGroup
			flood.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-time.After(2 * time.Millisecond):
					}
					silent(i)
				}
			})
			defer func() { close(stop); flood.Wait() }()
			time.Sleep(300 * time.Millisecond) // let the daemon take what it will

			const honest = 10
			served := 0
			var lat []time.Duration
			for i := range honest {
				start := time.Now()
				c, err := socksDialTimeout(t, addr, "alice", "alice-secret-pw", target, 5*time.Second)
				if err != nil {
					t.Logf("honest client %d: %v after %v", i, err, time.Since(start).Round(time.Millisecond))
					if !tt.wantServe {
						break // one is enough to show it
					}
					continue
				}
				echo(t, c, "hello")
				c.Close()
				lat = append(lat, time.Since(start))
				served++
			}
			fds := countFDs(t, child.cmd.Process.Pid)
			mu.Lock()
			attackers := len(held)
			mu.Unlock()
			emfile := child.count("accept failed; retrying")
			t.Logf("%d silent connections opened from %d addresses; %d of %d honest clients served %v; daemon holds %d descriptors (limit %d); %d \"accept failed\" lines",
				attackers, attackIPs, served, honest, lat, fds, noFileChild, emfile)
			if tt.wantServe {
				if served != honest {
					t.Errorf("%d of %d honest clients served while the cap was under attack, want all", served, honest)
				}
				if emfile != 0 {
					t.Errorf("%d \"accept failed\" lines: the daemon ran out of descriptors", emfile)
				}
				if fds > noFileChild/config.NoFileShareForHandshakes+64 {
					t.Errorf("daemon holds %d descriptors, want about max_handshakes (%d) plus its own", fds, noFileChild/config.NoFileShareForHandshakes)
				}
				return
			}
			// The old behaviour, shown: out of descriptors, clients wait.
			if served == honest || emfile == 0 {
				t.Errorf("without a server-wide cap: %d of %d served, %d \"accept failed\" lines; want the daemon out of descriptors (is the attack too small?)", served, honest, emfile)
			}
		})
	}
}

// socksDialTimeout is socksDial with its own time bound.
func socksDialTimeout(tb testing.TB, server, user, pw, target string, limit time.Duration) (net.Conn, error) {
	tb.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := socksDial(tb, server, user, pw, target)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		return r.c, r.err
	case <-time.After(limit):
		go func() {
			if r := <-done; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, fmt.Errorf("no answer within %v", limit)
	}
}

func countFDs(tb testing.TB, pid int) int {
	tb.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		tb.Fatal(err)
	}
	return len(ents)
}

// childDaemon is the test binary re-run as TestNoFileDaemonChild.
type childDaemon struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	out bytes.Buffer
}

func startChild(tb testing.TB, path string) *childDaemon {
	tb.Helper()
	c := &childDaemon{}
	c.cmd = exec.Command(os.Args[0], "-test.run=^TestNoFileDaemonChild$", "-test.count=1")
	c.cmd.Env = append(os.Environ(), noFileChildEnv+"="+path)
	c.cmd.Stdout, c.cmd.Stderr = c, c
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		c.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- c.cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("child daemon: %v\n%s", err, c.String())
			}
		case <-time.After(30 * time.Second):
			c.cmd.Process.Kill()
			<-done
			tb.Errorf("child daemon did not stop within 30s of SIGTERM\n%s", c.String())
		}
	})
	return c
}

func (c *childDaemon) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

func (c *childDaemon) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

// lines are the child's JSON log lines.
func (c *childDaemon) lines() []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader([]byte(c.String())))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func (c *childDaemon) count(msg string) int {
	n := 0
	for _, l := range c.lines() {
		if l["msg"] == msg {
			n++
		}
	}
	return n
}

func (c *childDaemon) waitLine(tb testing.TB, msg string) map[string]any {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range c.lines() {
			if l["msg"] == msg {
				return l
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	tb.Fatalf("child daemon: no %q line within 30s\n%s", msg, c.String())
	return nil
}
