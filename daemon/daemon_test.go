package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/socks"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/net/proxy"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestListenNetwork(t *testing.T) {
	tests := []struct {
		name string
		addr string
		want string
	}{
		{"ipv4 any", "0.0.0.0:1080", "tcp4"},
		{"ipv4 loopback", "127.0.0.1:1080", "tcp4"},
		{"ipv6 any", "[::]:1080", "tcp6"},
		{"ipv6 loopback", "[::1]:1080", "tcp6"},
		{"both families", ":1080", "tcp"},
		{"ipv4-mapped", "[::ffff:127.0.0.1]:1", "tcp4"},
		{"zoned ipv6", "[fe80::1%eth0]:1080", "tcp6"},
		{"host name", "localhost:1080", "tcp"},
		{"no port", "127.0.0.1", "tcp"},
		{"empty", "", "tcp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := listenNetwork(tt.addr); got != tt.want {
				t.Errorf("listenNetwork(%q) = %q, want %q", tt.addr, got, tt.want)
			}
		})
	}
}

// bcryptHash hashes pw at the cheapest cost.
func bcryptHash(tb testing.TB, pw string) string {
	tb.Helper()
	return bcryptHashCost(tb, pw, bcrypt.MinCost)
}

func bcryptHashCost(tb testing.TB, pw string, cost int) string {
	tb.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
	if err != nil {
		tb.Fatal(err)
	}
	return string(h)
}

// cheapUser is a [[users]] table for alice with a cost-4 hash. Without
// any bcrypt user, auth.NewStore makes its dummy hash at the default cost,
// which takes about a second under the race detector.
func cheapUser(tb testing.TB) string {
	tb.Helper()
	return fmt.Sprintf("\n[[users]]\nname = \"alice\"\npassword_hash = %q\n", bcryptHash(tb, "alice-secret-pw"))
}

// parseConfig parses configuration text as a file would be.
func parseConfig(tb testing.TB, text string) *config.Config {
	tb.Helper()
	cfg, err := config.Parse([]byte(text), "test.toml")
	if err != nil {
		tb.Fatalf("config:\n%s\nerror: %v", text, err)
	}
	return cfg
}

func TestSettings(t *testing.T) {
	cfg := parseConfig(t, fmt.Sprintf(`
[server]
listen = ["127.0.0.1:1080"]
handshake_timeout = "3s"
idle_timeout = "7m"
connect_timeout = "4s"
udp_ports = "40000-40010"
udp_advertise = "192.0.2.9"
max_associations = 7
udp_max_datagram = 1200
udp_reply_filter = "address"

[[users]]
name = "alice"
password_hash = %q
interface = "eth1"

[[users]]
name = "bob"
password = "bob-pw"
max_associations = 3
`, bcryptHash(t, "alice-pw")))
	st, err := Settings(cfg)
	if err != nil {
		t.Fatalf("Settings: %v", err)
	}
	wantUsers := map[string]socks.User{
		"alice": {Egress: socks.Egress{Interfaces: []string{"eth1"}}},
		"bob":   {MaxAssociations: 3},
	}
	if !reflect.DeepEqual(st.Users, wantUsers) {
		t.Errorf("Users = %+v, want %+v", st.Users, wantUsers)
	}
	if !reflect.DeepEqual(st.NoAuthUser, socks.User{}) {
		t.Errorf("NoAuthUser = %+v, want zero (kernel routing)", st.NoAuthUser)
	}
	if st.HandshakeTimeout != 3*time.Second || st.IdleTimeout != 7*time.Minute || st.ConnectTimeout != 4*time.Second {
		t.Errorf("timeouts = %v/%v/%v, want 3s/7m/4s", st.HandshakeTimeout, st.IdleTimeout, st.ConnectTimeout)
	}
	wantUDP := socks.UDPSettings{
		PortMin:         40000,
		PortMax:         40010,
		Advertise:       netip.MustParseAddr("192.0.2.9"),
		MaxAssociations: 7,
		MaxDatagram:     1200,
		ReplyFilter:     socks.FilterAddress,
	}
	if st.UDP != wantUDP {
		t.Errorf("UDP = %+v, want %+v", st.UDP, wantUDP)
	}

	if st.Auth == nil || st.Auth.Len() != 2 {
		t.Fatalf("Auth = %v, want a store of 2 users", st.Auth)
	}
	creds := []struct {
		user, pw string
		want     error
	}{
		{"alice", "alice-pw", nil},
		{"bob", "bob-pw", nil},
		{"alice", "bob-pw", auth.ErrBadCredentials},
		{"carol", "alice-pw", auth.ErrBadCredentials},
	}
	for _, c := range creds {
		if err := st.Auth.Verify(c.user, c.pw); !errors.Is(err, c.want) {
			t.Errorf("Verify(%s, %s) = %v, want %v", c.user, c.pw, err, c.want)
		}
	}

	// Default deny list and own addresses.
	if err := st.Policy.Check(netip.MustParseAddr("127.0.0.1")); err == nil {
		t.Error("default policy allows 127.0.0.1")
	}
	if err := st.Policy.Check(netip.MustParseAddr("198.51.100.1")); err != nil {
		t.Errorf("default policy refuses 198.51.100.1: %v", err)
	}
}

func TestSettingsDefaults(t *testing.T) {
	st, err := Settings(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	want := socks.UDPSettings{
		MaxAssociations: config.DefaultMaxAssociations,
		MaxDatagram:     config.DefaultUDPMaxDatagram,
		ReplyFilter:     socks.FilterAddressPort,
	}
	if st.UDP != want {
		t.Errorf("UDP = %+v, want %+v", st.UDP, want)
	}
	if len(st.Users) != 0 || st.Auth.Len() != 0 {
		t.Errorf("Users = %v, Auth.Len() = %d; want none (no authentication)", st.Users, st.Auth.Len())
	}
	if st.HandshakeTimeout != config.DefaultHandshakeTimeout || st.IdleTimeout != config.DefaultIdleTimeout ||
		st.ConnectTimeout != config.DefaultConnectTimeout {
		t.Errorf("timeouts = %v/%v/%v, want the defaults", st.HandshakeTimeout, st.IdleTimeout, st.ConnectTimeout)
	}
}

func TestSettingsPolicy(t *testing.T) {
	tests := []struct {
		name    string
		server  string
		addr    string
		allowed bool
	}{
		{"default denies loopback", "", "127.0.0.1", false},
		{"default denies metadata", "", "169.254.169.254", false},
		{"empty deny allows loopback", "deny = []\ndeny_own_addresses = false", "127.0.0.1", true},
		{"own addresses still denied", "deny = []", "127.0.0.1", false},
		{"custom deny", `deny = ["198.51.100.0/24"]`, "198.51.100.1", false},
		{"custom deny replaces default", `deny = ["198.51.100.0/24"]` + "\ndeny_own_addresses = false", "169.254.169.254", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := Settings(parseConfig(t, "[server]\n"+tt.server+"\n"+cheapUser(t)))
			if err != nil {
				t.Fatal(err)
			}
			err = st.Policy.Check(netip.MustParseAddr(tt.addr))
			if tt.allowed && err != nil {
				t.Errorf("Check(%s) = %v, want allowed", tt.addr, err)
			}
			if !tt.allowed && err == nil {
				t.Errorf("Check(%s) = nil, want denied", tt.addr)
			}
		})
	}
}

func TestSettingsReplyFilter(t *testing.T) {
	tests := []struct {
		name  string
		value string // "" leaves the key out
		want  socks.ReplyFilter
	}{
		{"default", "", socks.FilterAddressPort},
		{"address-port", "address-port", socks.FilterAddressPort},
		{"address", "address", socks.FilterAddress},
		{"none", "none", socks.FilterNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := "[server]\n"
			if tt.value != "" {
				text += fmt.Sprintf("udp_reply_filter = %q\n", tt.value)
			}
			st, err := Settings(parseConfig(t, text+cheapUser(t)))
			if err != nil {
				t.Fatal(err)
			}
			if st.UDP.ReplyFilter != tt.want {
				t.Errorf("ReplyFilter = %v, want %v", st.UDP.ReplyFilter, tt.want)
			}
		})
	}
}

func TestSettingsBadUsers(t *testing.T) {
	// Config validation rejects these; Settings must not accept them
	// either when handed a Config built in code.
	tests := []struct {
		name  string
		users []config.User
	}{
		{"duplicate name", []config.User{{Name: "a", Password: "x"}, {Name: "a", Password: "y"}}},
		{"no password", []config.User{{Name: "a"}}},
		{"bad hash", []config.User{{Name: "a", PasswordHash: "$2b$xx$nothash"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Users = tt.users
			st, err := Settings(cfg)
			if err == nil {
				t.Fatalf("Settings = %+v, want an error", st)
			}
			if !strings.HasPrefix(err.Error(), "users: ") {
				t.Errorf("error %q, want it to start with \"users: \"", err)
			}
		})
	}
}

// freePort returns a TCP port free on both 127.0.0.1 and ::1 a moment ago.
// Config validation refuses port 0, so Run cannot be given one.
func freePort(tb testing.TB) int {
	tb.Helper()
	for range 20 {
		l6, err := net.Listen("tcp6", "[::1]:0")
		if err != nil {
			tb.Fatal(err)
		}
		port := l6.Addr().(*net.TCPAddr).Port
		l4, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		l6.Close()
		if err == nil {
			l4.Close()
			return port
		}
	}
	tb.Fatal("no port free on both 127.0.0.1 and ::1")
	return 0
}

// echoServer echoes on a loopback address until cleanup.
func echoServer(tb testing.TB, addr string) string {
	tb.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
			})
		}
	})
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// runningDaemon is one Run of the daemon in the background.
type runningDaemon struct {
	cancel context.CancelFunc
	errc   chan error
	logs   *observer.ObservedLogs
}

// startDaemon runs Run with cfg until cleanup (or stop).
func startDaemon(tb testing.TB, cfg *config.Config) *runningDaemon {
	tb.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	ctx, cancel := context.WithCancel(context.Background())
	d := &runningDaemon{cancel: cancel, errc: make(chan error, 1), logs: logs}
	go func() { d.errc <- Run(ctx, Options{Config: cfg, Log: zap.New(core), Level: zap.NewAtomicLevel()}) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-d.errc:
			d.errc <- err
		case <-time.After(10 * time.Second):
			tb.Error("Run did not return within 10s of cancel")
		}
	})
	return d
}

// waitLog waits until a line with msg has been logged.
func (d *runningDaemon) waitLog(tb testing.TB, msg string) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for d.logs.FilterMessage(msg).Len() == 0 {
		select {
		case err := <-d.errc:
			d.errc <- err
			tb.Fatalf("Run returned %v before logging %q", err, msg)
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no %q log line within 20s; logs: %v", msg, messages(d.logs))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stop cancels Run and returns how long it took to return, and what.
func (d *runningDaemon) stop(tb testing.TB) (time.Duration, error) {
	tb.Helper()
	start := time.Now()
	d.cancel()
	select {
	case err := <-d.errc:
		d.errc <- err
		return time.Since(start), err
	case <-time.After(10 * time.Second):
		tb.Fatal("Run did not return within 10s of cancel")
		return 0, nil
	}
}

func messages(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.All() {
		out = append(out, e.Message)
	}
	return out
}

// socksDial connects to target through the SOCKS5 server at server with
// golang.org/x/net/proxy, an independent client.
func socksDial(tb testing.TB, server, user, pw, target string) (net.Conn, error) {
	tb.Helper()
	var a *proxy.Auth
	if user != "" {
		a = &proxy.Auth{User: user, Password: pw}
	}
	d, err := proxy.SOCKS5("tcp", server, a, proxy.Direct)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.(proxy.ContextDialer).DialContext(ctx, "tcp", target)
}

// echo sends msg on c and expects it back.
func echo(tb testing.TB, c net.Conn, msg string) {
	tb.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		tb.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		tb.Fatalf("echo read %q, %v; want %q", buf, err, msg)
	}
}

func TestRun(t *testing.T) {
	port := freePort(t)
	addr4 := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	addr6 := net.JoinHostPort("::1", strconv.Itoa(port))
	cfg := parseConfig(t, fmt.Sprintf(`
[server]
listen = [%q, %q]
deny = []
deny_own_addresses = false
shutdown_timeout = "2s"

[[users]]
name = "alice"
password_hash = %q

[[users]]
name = "bob"
password = "bob-secret-pw"
interface = "nosuch0"
`, addr4, addr6, bcryptHash(t, "alice-secret-pw")))
	echo4 := echoServer(t, "127.0.0.1:0")
	echo6 := echoServer(t, "[::1]:0")

	d := startDaemon(t, cfg)
	d.waitLog(t, "ifsocks started")

	listening := map[string]bool{}
	for _, e := range d.logs.FilterMessage("listening").All() {
		listening[fmt.Sprint(e.ContextMap()["addr"])] = true
	}
	if want := map[string]bool{addr4: true, addr6: true}; !reflect.DeepEqual(listening, want) {
		t.Errorf("listening lines for %v, want %v", listening, want)
	}
	warn := d.logs.FilterMessageSnippet("interface not usable").All()
	if len(warn) != 1 {
		t.Errorf("%d \"interface not usable\" lines, want 1; logs: %v", len(warn), messages(d.logs))
	} else {
		w := warn[0]
		fields := w.ContextMap()
		if w.Level != zapcore.WarnLevel || fields["user"] != "bob" || fields["interface"] != "nosuch0" {
			t.Errorf("interface warning = %v %q %v, want Warn for user bob, interface nosuch0", w.Level, w.Message, fields)
		}
	}
	if n := d.logs.FilterMessageSnippet("plaintext password").FilterField(zap.String("user", "bob")).Len(); n != 1 {
		t.Errorf("%d plaintext password warnings for bob, want 1", n)
	}

	for _, server := range []string{addr4, addr6} {
		for _, target := range []string{echo4, echo6} {
			t.Run(fmt.Sprintf("via %s to %s", server, target), func(t *testing.T) {
				c, err := socksDial(t, server, "alice", "alice-secret-pw", target)
				if err != nil {
					t.Fatalf("CONNECT: %v", err)
				}
				defer c.Close()
				echo(t, c, "hello through "+server)
			})
		}
	}
	t.Run("missing interface", func(t *testing.T) {
		c, err := socksDial(t, addr4, "bob", "bob-secret-pw", echo4)
		if err == nil {
			c.Close()
			t.Fatal("CONNECT through nosuch0 succeeded")
		}
		if !strings.Contains(err.Error(), "network unreachable") {
			t.Errorf("CONNECT error %v, want reply 0x03 network unreachable", err)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		c, err := socksDial(t, addr4, "alice", "nope", echo4)
		if err == nil {
			c.Close()
			t.Fatal("CONNECT with a wrong password succeeded")
		}
	})

	took, err := d.stop(t)
	if err != nil {
		t.Errorf("Run = %v after cancel, want nil", err)
	}
	if took > time.Second {
		t.Errorf("Run took %v to return after cancel with no flows, want prompt", took)
	}
	if d.logs.FilterMessage("ifsocks stopped").Len() != 1 {
		t.Errorf("no \"ifsocks stopped\" line; logs: %v", messages(d.logs))
	}
	for _, a := range []string{addr4, addr6} {
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts after Run returned", a)
		}
	}
	for _, e := range d.logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		if strings.Contains(line, "secret-pw") {
			t.Errorf("password in log line: %s", line)
		}
	}
}

// TestRunShutdownGrace: a running flow gets shutdown_timeout to finish,
// then is cut, and Run still returns nil.
func TestRunShutdownGrace(t *testing.T) {
	const grace = 500 * time.Millisecond
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	cfg := parseConfig(t, fmt.Sprintf(`
[server]
listen = [%q]
deny = []
deny_own_addresses = false
shutdown_timeout = %q
%s`, addr, grace.String(), cheapUser(t)))
	target := echoServer(t, "127.0.0.1:0")
	d := startDaemon(t, cfg)
	d.waitLog(t, "ifsocks started")
	c, err := socksDial(t, addr, "alice", "alice-secret-pw", target)
	if err != nil {
		t.Fatalf("CONNECT: %v", err)
	}
	defer c.Close()
	echo(t, c, "before shutdown")

	took, err := d.stop(t)
	if err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
	if took < grace-50*time.Millisecond || took > grace+time.Second {
		t.Errorf("Run returned %v after cancel with a flow open, want about the %v grace", took, grace)
	}
	if d.logs.FilterMessageSnippet("grace period over").Len() != 1 {
		t.Errorf("no \"grace period over\" warning; logs: %v", messages(d.logs))
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("flow still open after shutdown: read err %v", err)
	}
}

func TestRunListenFails(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyAddr := busy.Addr().String()
	freeAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	cfg := parseConfig(t, fmt.Sprintf("[server]\nlisten = [%q, %q]\n%s", freeAddr, busyAddr, cheapUser(t)))

	core, logs := observer.New(zapcore.DebugLevel)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err = Run(ctx, Options{Config: cfg, Log: zap.New(core), Level: zap.NewAtomicLevel()})
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Run took %v to fail", took)
	}
	if err == nil {
		t.Fatal("Run = nil with the address in use, want an error")
	}
	if !strings.Contains(err.Error(), busyAddr) {
		t.Errorf("Run error %q does not name %s", err, busyAddr)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("Run error %v, want EADDRINUSE", err)
	}
	if n := logs.FilterMessage("listening").Len(); n != 0 {
		t.Errorf("%d \"listening\" lines although Run failed", n)
	}
	// All or nothing: the address that did open is closed again.
	ln, err := net.Listen("tcp4", freeAddr)
	if err != nil {
		t.Errorf("%s still taken after Run failed: %v", freeAddr, err)
	} else {
		ln.Close()
	}
}
