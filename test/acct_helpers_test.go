//go:build linux

package test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
	"golang.org/x/net/proxy"
)

// Helpers of the accounting tests (acct_*_test.go). They run in the egress
// topology (egress_helpers_test.go) under namespace names of their own, with
// upstream servers in U that count every byte they receive and send, per
// port, so that what the daemon books can be compared with what really
// crossed.

const (
	acctPrefix  = "h15-"
	acctProxy   = egProxy + ":1080"
	acctTCPBase = 7000 // U serves user i's TCP on egSvc:7000+i ...
	acctUDPBase = 7100 // ... and its UDP echo on egSvc:7100+i
)

// acctUser is the i-th user of the accounting tests.
func acctUser(i int) nstest.User {
	return nstest.User{Name: fmt.Sprintf("acct%d", i), Password: fmt.Sprintf("acct-Pw-%02d-x9", i)}
}

// byteCount is what an upstream port received from the proxy (up) and
// sent to it (down).
type byteCount struct{ up, down atomic.Int64 }

type acctUpstream struct {
	tcp, udp []*byteCount
}

func (u *acctUpstream) total(i int) (up, down int64) {
	return u.tcp[i].up.Load() + u.udp[i].up.Load(), u.tcp[i].down.Load() + u.udp[i].down.Load()
}

// startAcctUpstream serves n users' ports in topo's U until the test ends.
// TCP: the client sends "DOWN UP\n" and UP bytes; the server then sends
// DOWN bytes and closes. UDP: every datagram is echoed.
func startAcctUpstream(t *testing.T, topo *topology, n int) *acctUpstream {
	t.Helper()
	u := &acctUpstream{}
	var wg sync.WaitGroup
	// Registered first, so it runs after the cleanups below have closed
	// the sockets the goroutines wait on.
	t.Cleanup(wg.Wait)
	for i := range n {
		tc, uc := &byteCount{}, &byteCount{}
		u.tcp, u.udp = append(u.tcp, tc), append(u.udp, uc)
		ln, err := nstest.ListenIn(topo.U, "tcp4", net.JoinHostPort(egSvc, strconv.Itoa(acctTCPBase+i)))
		if err != nil {
			t.Fatal(err)
		}
		pc, err := nstest.ListenPacketIn(topo.U, "udp4", net.JoinHostPort(egSvc, strconv.Itoa(acctUDPBase+i)))
		if err != nil {
			ln.Close()
			t.Fatal(err)
		}
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
				wg.Go(func() { serveCounted(c, tc) })
			}
		})
		wg.Go(func() {
			buf := make([]byte, 65535)
			for {
				m, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				uc.up.Add(int64(m))
				if k, err := pc.WriteTo(buf[:m], from); err == nil {
					uc.down.Add(int64(k))
				}
			}
		})
		t.Cleanup(func() {
			ln.Close()
			pc.Close()
			mu.Lock()
			for _, c := range conns {
				c.Close()
			}
			mu.Unlock()
		})
	}
	return u
}

// atomicCountReader counts what it reads into n, for other goroutines.
type atomicCountReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c atomicCountReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n.Add(int64(k))
	return k, err
}

func serveCounted(c net.Conn, bc *byteCount) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	r := bufio.NewReader(atomicCountReader{c, &bc.up})
	line, err := r.ReadString('\n')
	if err != nil {
		return
	}
	var down, up int64
	if _, err := fmt.Sscanf(line, "%d %d", &down, &up); err != nil {
		return
	}
	if _, err := io.CopyN(io.Discard, r, up); err != nil {
		return
	}
	buf := make([]byte, 256<<10)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for down > 0 {
		k, err := c.Write(buf[:min(int64(len(buf)), down)])
		bc.down.Add(int64(k))
		down -= int64(k)
		if err != nil {
			return
		}
	}
}

// acctDialer is golang.org/x/net/proxy's SOCKS5 client (independent of
// ours) in namespace ns.
func acctDialer(ns string, u nstest.User) proxy.ContextDialer {
	var auth *proxy.Auth
	if u != egAnon {
		auth = &proxy.Auth{User: u.Name, Password: u.Password}
	}
	d, err := proxy.SOCKS5("tcp", acctProxy, auth, nstest.Dialer{NS: ns, Timeout: 5 * time.Second})
	if err != nil {
		panic(err) // only for a bad network name
	}
	return d.(proxy.ContextDialer)
}

// acctTCP runs one TCP flow of user u to its upstream port: up bytes sent,
// down bytes asked for. It returns how many bytes came back.
func acctTCP(ctx context.Context, ns string, u nstest.User, port, up, down int) (int64, error) {
	c, err := acctDialer(ns, u).DialContext(ctx, "tcp", net.JoinHostPort(egSvc, strconv.Itoa(port)))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	payload := make([]byte, up)
	for i := range payload {
		payload[i] = byte(i)
	}
	if _, err := fmt.Fprintf(c, "%d %d\n", down, up); err != nil {
		return 0, err
	}
	if _, err := c.Write(payload); err != nil {
		return 0, err
	}
	return io.Copy(io.Discard, c)
}

// acctUDP opens a UDP association as u from ns and echoes n datagrams of
// size bytes through it to the user's UDP port, one at a time (so none is
// lost to a full queue and both ends count the same).
func acctUDP(ns string, u nstest.User, port, n, size int) error {
	pc, err := nstest.ListenPacketIn(ns, "udp4", net.JoinHostPort(egClient, "0"))
	if err != nil {
		return err
	}
	a := &udpAssoc{pc: pc.(*net.UDPConn)}
	defer a.close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	local := a.pc.LocalAddr().(*net.UDPAddr).AddrPort()
	a.res, err = socksDo(ctx, ns, socksRequest{proxy: acctProxy, user: u.Name, pass: u.Password, cmd: 3,
		target: netip.AddrPortFrom(netip.IPv4Unspecified(), local.Port()).String()})
	if err != nil {
		return err
	}
	if a.res.reply != 0 {
		return fmt.Errorf("UDP ASSOCIATE reply %d", a.res.reply)
	}
	a.relay = a.res.bound
	dst := net.JoinHostPort(egSvc, strconv.Itoa(port))
	for k := range n {
		payload := []byte(strings.Repeat(string(rune('a'+k%26)), size))
		if err := a.send(dst, payload); err != nil {
			return err
		}
		r, err := a.recv(5 * time.Second)
		if err != nil {
			return fmt.Errorf("datagram %d: %w", k, err)
		}
		if string(r.payload) != string(payload) {
			return fmt.Errorf("datagram %d: echo of %d bytes differs", k, len(r.payload))
		}
	}
	return nil
}

// acctConfig renders a daemon configuration with accounting in dbPath
// and users 0..n-1; extra goes into [accounting], userExtra into every
// [[users]] entry.
func acctConfig(dbPath string, n int, flush, extra string, userExtra func(i int) string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n[accounting]\npath = %q\nflush_interval = %q\n%s\n", dbPath, flush, extra)
	for i := range n {
		u := acctUser(i)
		fmt.Fprintf(&b, "\n[[users]]\nname = %q\npassword = %q\n", u.Name, u.Password)
		if userExtra != nil {
			b.WriteString(userExtra(i))
		}
	}
	return egressConfig([]string{acctProxy}, b.String())
}

// startAcctDaemon runs the daemon in topo's P with cfg and waits until it
// listens.
func startAcctDaemon(t *testing.T, topo *topology, cfg string) *opsDaemon {
	t.Helper()
	od := spawnDaemon(t, topo, "acct", cfg, nil, func(od *opsDaemon) {
		for i := range 10 {
			if strings.Contains(od.logs.String(), acctUser(i).Password) {
				t.Errorf("accounting daemon log contains users[%d]'s password", i)
			}
		}
	})
	if err := od.waitListening([]string{acctProxy}, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return od
}

// sigkill kills the daemon without warning and waits for it. The
// cleanup's SIGTERM then finds it gone, which it must not report.
func (od *opsDaemon) sigkill(t *testing.T) {
	t.Helper()
	if err := od.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-od.done
	od.killed = true // on purpose; done is closed, so Wait has returned
}

// stopTerm stops the daemon with SIGTERM and requires a clean exit.
func (od *opsDaemon) stopTerm(t *testing.T) {
	t.Helper()
	if err := od.stop(); err != nil {
		t.Fatal(err)
	}
	if od.exitErr() != nil {
		t.Fatalf("daemon exited with %v after SIGTERM", od.exitErr())
	}
}

// dbRow is one user's totals as the sqlite3 shell reads them.
type dbRow struct{ up, down, flows int64 }

// sqliteTotals reads every user's totals with the sqlite3 shell, as an
// operator would, while the daemon may run.
func sqliteTotals(t *testing.T, path string) map[string]dbRow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sqlite3", "-readonly", path,
		"SELECT user, sum(bytes_up), sum(bytes_down), sum(flows) FROM usage GROUP BY user").CombinedOutput()
	if err != nil {
		t.Fatalf("sqlite3: %v: %s", err, out)
	}
	rows := map[string]dbRow{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "|")
		if len(f) != 4 {
			continue
		}
		var r dbRow
		r.up, _ = strconv.ParseInt(f[1], 10, 64)
		r.down, _ = strconv.ParseInt(f[2], 10, 64)
		r.flows, _ = strconv.ParseInt(f[3], 10, 64)
		rows[f[0]] = r
	}
	return rows
}

// usageCmd runs `ifsocks usage -json` with cfgText (whose [accounting]
// path is the database) and returns its rows by user.
func usageCmd(t *testing.T, bin, cfgText string, args ...string) map[string]usageRow {
	t.Helper()
	path := filepath.Join(t.TempDir(), "usage.toml")
	if err := os.WriteFile(path, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"usage", "-config", path, "-json"}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("ifsocks usage: %v: %s", err, ee.Stderr)
		}
		t.Fatalf("ifsocks usage: %v", err)
	}
	var rows []usageRow
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("ifsocks usage -json: %v: %s", err, out)
	}
	m := map[string]usageRow{}
	for _, r := range rows {
		m[r.User] = r
	}
	return m
}

// usageRow is one row of `ifsocks usage -json` and /usage.
type usageRow struct {
	User        string  `json:"user"`
	Period      string  `json:"period"`
	PeriodStart string  `json:"period_start"`
	Up          int64   `json:"bytes_up"`
	Down        int64   `json:"bytes_down"`
	Flows       int64   `json:"flows"`
	Quota       int64   `json:"quota"`
	PercentUsed float64 `json:"percent_used"`
}

// liveUsage asks the daemon's /usage (from P, where metrics listen).
func liveUsage(t *testing.T, topo *topology) map[string]usageRow {
	t.Helper()
	body, err := httpGetIn(topo.P, "http://"+egMetrics+"/usage")
	if err != nil {
		t.Fatal(err)
	}
	var rows []usageRow
	if err := json.Unmarshal([]byte(body), &rows); err != nil {
		t.Fatalf("/usage: %v: %s", err, body)
	}
	m := map[string]usageRow{}
	for _, r := range rows {
		m[r.User] = r
	}
	return m
}

// httpGetIn fetches url from inside namespace ns.
func httpGetIn(ns, url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "8", url).Output()
	return string(out), err
}

// acctHTTPConnect is acctTCP through the daemon's HTTP proxy (CONNECT,
// Basic credentials) on the same listener.
func acctHTTPConnect(ctx context.Context, ns string, u nstest.User, port, up, down int) (int64, error) {
	c, err := nstest.Dialer{NS: ns, Timeout: 5 * time.Second}.DialContext(ctx, "tcp", acctProxy)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	target := net.JoinHostPort(egSvc, strconv.Itoa(port))
	cred := base64.StdEncoding.EncodeToString([]byte(u.Name + ":" + u.Password))
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", target, target, cred); err != nil {
		return 0, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("CONNECT: %s", resp.Status)
	}
	payload := make([]byte, up)
	if _, err := fmt.Fprintf(c, "%d %d\n", down, up); err != nil {
		return 0, err
	}
	if _, err := c.Write(payload); err != nil {
		return 0, err
	}
	return io.Copy(io.Discard, br)
}
