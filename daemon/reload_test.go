package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/config"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// fileDaemon is a daemon running from a config file that tests rewrite
// and reload.
type fileDaemon struct {
	*runningDaemon
	path   string
	hup    chan os.Signal
	level  zap.AtomicLevel
	reload int // reloads sent so far
}

func startFileDaemon(tb testing.TB, text string) *fileDaemon {
	tb.Helper()
	return startFileDaemonWith(tb, text, nil)
}

// startFileDaemonWith is startFileDaemon with edit applied to the options.
func startFileDaemonWith(tb testing.TB, text string, edit func(*Options)) *fileDaemon {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		tb.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	level := zap.NewAtomicLevelAt(zapcore.InfoLevel)
	ctx, cancel := context.WithCancel(context.Background())
	d := &fileDaemon{
		runningDaemon: &runningDaemon{cancel: cancel, errc: make(chan error, 1), logs: logs},
		path:          path, hup: make(chan os.Signal, 1), level: level,
	}
	opts := Options{Path: path, Config: cfg, Log: zap.New(core), Level: level, Reload: d.hup}
	if edit != nil {
		edit(&opts)
	}
	go func() { d.errc <- Run(ctx, opts) }()
	tb.Cleanup(func() { d.stop(tb) })
	d.waitLog(tb, "ifsocks started")
	return d
}

// reloadWith writes text to the config file, sends SIGHUP and waits for
// the reload's result line, which it returns.
func (d *fileDaemon) reloadWith(tb testing.TB, text string) observer.LoggedEntry {
	tb.Helper()
	if err := os.WriteFile(d.path, []byte(text), 0o600); err != nil {
		tb.Fatal(err)
	}
	d.reload++
	d.hup <- syscall.SIGHUP
	deadline := time.Now().Add(20 * time.Second)
	for {
		done := d.logs.Filter(func(e observer.LoggedEntry) bool {
			return e.Message == "configuration reloaded" || strings.HasPrefix(e.Message, "reload failed")
		}).All()
		if len(done) >= d.reload {
			return done[d.reload-1]
		}
		if time.Now().After(deadline) {
			tb.Fatalf("reload %d: no result within 20s; logs: %v", d.reload, messages(d.logs))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func reloadConfig(tb testing.TB, listen []string, users []string, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[server]\nlisten = [%s]\ndeny = []\ndeny_own_addresses = false\n%s\n", quoteAll(listen), extra)
	for _, u := range users {
		fmt.Fprintf(&b, "[[users]]\nname = %q\npassword = %q\n", u, u+"-pw")
	}
	return b.String()
}

func quoteAll(s []string) string {
	q := make([]string, len(s))
	for i, x := range s {
		q[i] = strconv.Quote(x)
	}
	return strings.Join(q, ", ")
}

// TestReloadUsers: a reload adds and removes users for new connections,
// the removed user's running flow goes on, and a broken file changes
// nothing.
func TestReloadUsers(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	target := echoServer(t, "127.0.0.1:0")
	d := startFileDaemon(t, reloadConfig(t, []string{addr}, []string{"erin", "frank"}, ""))

	running, err := socksDial(t, addr, "erin", "erin-pw", target)
	if err != nil {
		t.Fatal(err)
	}
	defer running.Close()
	echo(t, running, "before")

	line := d.reloadWith(t, reloadConfig(t, []string{addr}, []string{"frank", "dave"}, ""))
	if line.Message != "configuration reloaded" || line.ContextMap()["users_removed"] != int64(1) {
		t.Fatalf("reload: %s %v", line.Message, line.ContextMap())
	}
	echo(t, running, "erin's flow survives the reload")
	if c, err := socksDial(t, addr, "dave", "dave-pw", target); err != nil {
		t.Fatalf("added user: %v", err)
	} else {
		c.Close()
	}
	if _, err := socksDial(t, addr, "erin", "erin-pw", target); err == nil {
		t.Fatal("removed user can still connect")
	}

	line = d.reloadWith(t, reloadConfig(t, []string{addr}, []string{"frank"}, "bogus_key = 1"))
	if !strings.HasPrefix(line.Message, "reload failed") || !strings.Contains(line.ContextMap()["error"].(string), "bogus_key") {
		t.Fatalf("broken reload: %s %v", line.Message, line.ContextMap())
	}
	if c, err := socksDial(t, addr, "dave", "dave-pw", target); err != nil {
		t.Fatalf("after a broken reload dave must still work: %v", err)
	} else {
		c.Close()
	}
	echo(t, running, "and survives the broken one")
}

func TestReloadClosesRemoved(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	target := echoServer(t, "127.0.0.1:0")
	extra := "reload_closes_removed = true"
	d := startFileDaemon(t, reloadConfig(t, []string{addr}, []string{"erin", "frank"}, extra))
	erin, err := socksDial(t, addr, "erin", "erin-pw", target)
	if err != nil {
		t.Fatal(err)
	}
	defer erin.Close()
	frank, err := socksDial(t, addr, "frank", "frank-pw", target)
	if err != nil {
		t.Fatal(err)
	}
	defer frank.Close()
	echo(t, erin, "x")

	line := d.reloadWith(t, reloadConfig(t, []string{addr}, []string{"frank"}, extra))
	if line.ContextMap()["flows_closed"] != int64(1) {
		t.Fatalf("reload: %v", line.ContextMap())
	}
	erin.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := erin.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("removed user's flow: read %d, %v; want EOF", n, err)
	}
	echo(t, frank, "frank is untouched")
	d.waitLog(t, "flow")
	var outcome any
	for _, e := range d.logs.FilterMessage("flow").All() {
		if e.ContextMap()["user"] == "erin" {
			outcome = e.ContextMap()["outcome"]
		}
	}
	if outcome != "user_removed" {
		t.Fatalf("erin's flow outcome %v, want user_removed", outcome)
	}
}

// TestReloadListeners: added addresses accept, removed ones refuse, and an
// unchanged one accepts throughout the reload.
func TestReloadListeners(t *testing.T) {
	keep := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	drop := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	add := net.JoinHostPort("::1", strconv.Itoa(freePort(t)))
	d := startFileDaemon(t, reloadConfig(t, []string{keep, drop}, []string{"frank"}, ""))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var fails, tries int
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, err := net.DialTimeout("tcp", keep, time.Second)
			mu.Lock()
			tries++
			if err != nil {
				fails++
			} else {
				c.Close()
			}
			mu.Unlock()
		}
	})
	stopDialing := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopDialing() // also when reloadWith fails the test
	d.reloadWith(t, reloadConfig(t, []string{keep, add}, []string{"frank"}, ""))
	time.Sleep(50 * time.Millisecond)
	stopDialing()
	if fails > 0 || tries < 10 {
		t.Fatalf("unchanged listener: %d of %d connects failed across the reload", fails, tries)
	}
	if c, err := net.DialTimeout("tcp", add, time.Second); err != nil {
		t.Fatalf("added listener: %v", err)
	} else {
		c.Close()
	}
	if c, err := net.DialTimeout("tcp", drop, time.Second); err == nil {
		c.Close()
		t.Fatal("removed listener still accepts")
	}
}

// TestReloadLogLevel: log.level takes effect at reload; a listen address
// that cannot be opened fails the whole reload.
func TestReloadLogLevelAndFailedListen(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	d := startFileDaemon(t, reloadConfig(t, []string{addr}, []string{"frank"}, ""))
	text := reloadConfig(t, []string{addr}, []string{"frank"}, "") + "[log]\nlevel = \"debug\"\n"
	d.reloadWith(t, text)
	if d.level.Level() != zapcore.DebugLevel {
		t.Fatalf("level %v after reload, want debug", d.level.Level())
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	line := d.reloadWith(t, reloadConfig(t, []string{addr, busy.Addr().String()}, []string{"dave"}, ""))
	if !strings.HasPrefix(line.Message, "reload failed") {
		t.Fatalf("reload with a busy address: %s", line.Message)
	}
	// Nothing of the failed file took effect: frank still works, dave not.
	target := echoServer(t, "127.0.0.1:0")
	if c, err := socksDial(t, addr, "frank", "frank-pw", target); err != nil {
		t.Fatalf("frank after failed reload: %v", err)
	} else {
		c.Close()
	}
	if _, err := socksDial(t, addr, "dave", "dave-pw", target); err == nil {
		t.Fatal("dave works after a failed reload")
	}
}

// TestNotify checks the sd_notify messages over a real datagram socket.
func TestNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	next := func() string {
		t.Helper()
		buf := make([]byte, 512)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no sd_notify message: %v", err)
		}
		return string(buf[:n])
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	text := reloadConfig(t, []string{addr}, []string{"frank"}, "")
	d := startFileDaemon(t, text)
	if m := next(); m != "READY=1" {
		t.Fatalf("first message %q, want READY=1", m)
	}
	d.reloadWith(t, text)
	if m := next(); !strings.HasPrefix(m, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Fatalf("reload message %q", m)
	}
	if m := next(); m != "READY=1" {
		t.Fatalf("after reload %q, want READY=1", m)
	}
	d.stop(t)
	if m := next(); m != "STOPPING=1" {
		t.Fatalf("at stop %q, want STOPPING=1", m)
	}
}

// TestMetricsEndpoint scrapes /metrics after known traffic.
func TestMetricsEndpoint(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	maddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	target := echoServer(t, "127.0.0.1:0")
	d := startFileDaemon(t, reloadConfig(t, []string{addr}, []string{"frank"}, "")+
		fmt.Sprintf("[metrics]\nlisten = %q\n", maddr))
	c, err := socksDial(t, addr, "frank", "frank-pw", target)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, c, strings.Repeat("m", 1000))
	c.Close()
	if _, err := socksDial(t, addr, "frank", "wrong", target); err == nil {
		t.Fatal("wrong password accepted")
	}
	d.waitLog(t, "flow")
	body := scrape(t, "http://"+maddr+"/metrics")
	for _, want := range []string{
		`ifsocks_bytes_total{direction="up",interface="",user="frank"} 1000`,
		`ifsocks_bytes_total{direction="down",interface="",user="frank"} 1000`,
		`ifsocks_flows_total{interface="",outcome="ok",protocol="socks5",user="frank"} 1`,
		`ifsocks_auth_failures_total{reason="bad_credentials"} 1`,
		`ifsocks_active_flows{interface="",user="frank"} 0`,
		`ifsocks_config_reloads_total{result="failure"} 0`,
		`ifsocks_dial_duration_seconds_count{interface="",result="success"} 1`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	if h := scrape(t, "http://"+maddr+"/healthz"); h != "ok\n" {
		t.Errorf("/healthz = %q", h)
	}
}

func scrape(tb testing.TB, url string) string {
	tb.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		tb.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

// TestReloadAppliesToOpenHandshake: with reload_closes_removed, a
// connection accepted (and past its greeting) before the reload that
// removes erin cannot log in as erin after it, and one accepted before a
// reload that adds a deny entry cannot reach the newly denied target.
func TestReloadAppliesToOpenHandshake(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	target := echoServer(t, "127.0.0.1:0")
	// Two reloads pass while the handshakes wait: on a loaded machine
	// under -race that can exceed the default handshake_timeout.
	extra := "reload_closes_removed = true\nhandshake_timeout = \"5m\""
	d := startFileDaemon(t, reloadConfig(t, []string{addr}, []string{"erin", "frank"}, extra))
	raw := func() net.Conn {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		if _, err := c.Write([]byte{5, 1, 2}); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 2)
		if _, err := io.ReadFull(c, got); err != nil || got[1] != 2 {
			t.Fatalf("method selection % x, %v", got, err)
		}
		return c
	}
	login := func(c net.Conn, user string) byte {
		msg := append([]byte{1, byte(len(user))}, user...)
		msg = append(append(msg, byte(len(user)+3)), user+"-pw"...)
		c.Write(msg)
		got := make([]byte, 2)
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("auth status: %v", err)
		}
		return got[1]
	}
	erin := raw()
	frank := raw()
	if st := login(frank, "frank"); st != 0 {
		t.Fatalf("frank's login: status %d", st)
	}
	d.reloadWith(t, reloadConfig(t, []string{addr}, []string{"frank"}, extra))
	if st := login(erin, "erin"); st == 0 {
		t.Fatal("erin, removed by the reload, logged in on a connection accepted before it")
	}

	// The deny list is now loopback: frank's request, sent after the
	// reload on a connection that logged in before it, is refused.
	d.reloadWith(t, strings.Replace(reloadConfig(t, []string{addr}, []string{"frank"}, extra), "deny = []", `deny = ["127.0.0.0/8"]`, 1))
	tap := netip.MustParseAddrPort(target)
	req := []byte{5, 1, 0, 1}
	req = append(req, tap.Addr().AsSlice()...)
	req = append(req, byte(tap.Port()>>8), byte(tap.Port()))
	frank.Write(req)
	rep := make([]byte, 2)
	if _, err := io.ReadFull(frank, rep); err != nil || rep[1] != 2 {
		t.Fatalf("frank's CONNECT to a target denied after login: reply % x, %v; want 05 02", rep, err)
	}
}
