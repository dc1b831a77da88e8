//go:build linux

package test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// 100 MB through the HTTP proxy, both ways a download can go: through a
// CONNECT tunnel, which must still be relayed by splice(2) (strace on the
// daemon counts its bytes by system call), and through plain forwarding.
func TestHTTPProxyBulk(t *testing.T) {
	if testing.Short() {
		t.Skip("100 MB transfers")
	}
	strace, err := exec.LookPath("strace")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("strace not installed: CI must show that CONNECT splices")
		}
		t.Skip("strace not installed")
	}
	topo := newEgressTopology(t)
	startHTTPUpstream(t, topo)
	od := startEgressDaemon(t, topo, httpProxyConfig(), egHTTPListen)
	const size = 100 << 20
	const seed = 13
	url := fmt.Sprintf("http://%s/bytes?n=%d&seed=%d", net2(egSvc, egHTTPUpPort), size, seed)
	want := expectedSHA256(seed, size)

	t.Run("connect", func(t *testing.T) {
		trace := filepath.Join(t.TempDir(), "strace.out")
		stop := traceDaemon(t, strace, od.pid(), trace)
		mark := od.mark()
		sum := curlSHA256(t, topo.C, "--proxytunnel", url)
		stop()
		if sum != want {
			t.Fatalf("downloaded sha256 %s, want %s", sum, want)
		}
		line := od.waitLineSince(t, mark, "flow")
		wantFields(t, line, map[string]any{"protocol": "http-connect", "interface": "wan1", "outcome": "ok"})
		if down, _ := line["bytes_down"].(float64); down < size {
			t.Errorf("flow bytes_down %v, want at least %d", down, size)
		}
		wantSpliced(t, straceBytes(t, trace), size)
	})

	// The same download through a CONNECT granted on the second try: the
	// first, without credentials, gets its 407 from the fast path, and
	// the retry on the same connection is answered by net/http's server,
	// which hands over a hijacked connection. The relay must still get
	// the raw socket: the GET sent in the same write as the retry's head
	// (bytes net/http has already buffered) reaches the origin first,
	// and then the tunnel splices as the fast path's does.
	t.Run("connect after 407", func(t *testing.T) {
		trace := filepath.Join(t.TempDir(), "strace.out")
		stop := traceDaemon(t, strace, od.pid(), trace)
		mark := od.mark()
		sum, err := connectAfter407(topo.C, egHTTPListen, egFo, net2(egSvc, egHTTPUpPort), fmt.Sprintf("/bytes?n=%d&seed=%d", size, seed))
		stop()
		if err != nil {
			t.Fatal(err)
		}
		if sum != want {
			t.Fatalf("downloaded sha256 %s, want %s", sum, want)
		}
		line := od.waitLineSince(t, mark, "flow")
		wantFields(t, line, map[string]any{"protocol": "http-connect", "interface": "wan1", "outcome": "ok"})
		wantSpliced(t, straceBytes(t, trace), size)
	})

	t.Run("plain", func(t *testing.T) {
		mark := od.mark()
		if sum := curlSHA256(t, topo.C, "", url); sum != want {
			t.Fatalf("downloaded sha256 %s, want %s", sum, want)
		}
		line := od.waitLineSince(t, mark, "flow")
		wantFields(t, line, map[string]any{"protocol": "http", "interface": "wan1", "outcome": "ok", "status": float64(200)})
		if down, _ := line["bytes_down"].(float64); down < size {
			t.Errorf("flow bytes_down %v, want at least %d", down, size)
		}
	})
}

func net2(host, port string) string { return host + ":" + port }

// connectAfter407 asks proxy (from ns) for a tunnel to target twice on one
// connection, first without credentials (which must be refused with 407),
// then as u with "GET path" sent in the same write as the head, and
// returns the sha256 of the body the origin answers through the tunnel.
func connectAfter407(ns, proxy string, u nstest.User, target, path string) (string, error) {
	var c net.Conn
	err := nstest.Enter(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", proxy, 5*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	// Heads within 30 s, however loaded the machine; the body gets longer.
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	head := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
	if _, err := io.WriteString(c, head+"\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", fmt.Errorf("answer to the first CONNECT: %w", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusProxyAuthRequired {
		return "", fmt.Errorf("first CONNECT: %s, want 407", resp.Status)
	}
	auth := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(u.Name+":"+u.Password)) + "\r\n"
	get := "GET " + path + " HTTP/1.1\r\nHost: " + target + "\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(c, head+auth+"\r\n"+get); err != nil {
		return "", err
	}
	for _, want := range []string{"HTTP/1.1 200 Connection established\r\n", "\r\n"} {
		if line, err := br.ReadString('\n'); err != nil || line != want {
			return "", fmt.Errorf("answer to the second CONNECT: %q (%v), want %q", line, err, want)
		}
	}
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		return "", fmt.Errorf("origin's answer through the tunnel: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("origin answered %s", resp.Status)
	}
	_ = c.SetDeadline(time.Now().Add(180 * time.Second))
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return "", fmt.Errorf("body through the tunnel: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// curlSHA256 downloads url as fo through the HTTP proxy (with flag, e.g.
// --proxytunnel) in ns and returns the sha256 of what arrived.
func curlSHA256(t *testing.T, ns, flag, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Second)
	defer cancel()
	script := fmt.Sprintf("set -o pipefail; curl -sS -g --max-time 180 %s -x %s '%s' | sha256sum", flag, proxyURL(egFo, egHTTPListen), url)
	out, errOut, err := nstest.Run(ctx, nil, "ip", "netns", "exec", ns, "bash", "-c", script)
	if err != nil {
		t.Fatalf("download: %v\n%s", err, errOut)
	}
	sum, _, _ := strings.Cut(out, " ")
	return sum
}

// traceDaemon attaches strace to pid (every thread), writing the calls
// that move bytes to file; stop detaches it.
func traceDaemon(t *testing.T, strace string, pid int, file string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	cmd := exec.CommandContext(ctx, strace, "-f", "-qq", "-e", "signal=none",
		"-e", "trace=splice,read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg",
		"-o", file, "-p", strconv.Itoa(pid))
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	// strace has attached once it writes its first line; the daemon is
	// idle, so give it a moment instead.
	time.Sleep(time.Second)
	done := false
	stop = func() {
		if done {
			return
		}
		done = true
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
		cancel()
	}
	t.Cleanup(stop)
	return stop
}

// straceBytes sums the results of each system call in an strace output.
func straceBytes(t *testing.T, file string) map[string]int64 {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		// "PID name(args...) = N" or "<... name resumed>...) = N"
		eq := strings.LastIndex(line, ") = ")
		if eq < 0 {
			continue
		}
		res := strings.Fields(line[eq+4:])
		n, err := strconv.ParseInt(res[0], 10, 64)
		if err != nil || n <= 0 {
			continue
		}
		name := ""
		if i := strings.Index(line, "<... "); i >= 0 {
			name = strings.Fields(line[i+5:])[0]
		} else if f := strings.Fields(line); len(f) > 1 {
			name, _, _ = strings.Cut(f[1], "(")
		}
		out[name] += n
	}
	return out
}

// rate_limit holds for the HTTP proxy too, forwarding included: a user at
// 1 MiB/s cannot fetch 4 MiB in under 3 s whichever way it asks.
func TestHTTPProxyRateLimit(t *testing.T) {
	topo := newEgressTopology(t)
	startHTTPUpstream(t, topo)
	startEgressDaemon(t, topo, egressConfig([]string{egHTTPListen},
		userBlock(egFo, "interface = \"wan1\"\nrate_limit = \"1MiB\"")), egHTTPListen)
	const size = 4 << 20
	url := fmt.Sprintf("http://%s/bytes?n=%d&seed=7", net2(egSvc, egHTTPUpPort), size)
	want := expectedSHA256(7, size)
	for _, flag := range []string{"", "--proxytunnel"} {
		start := time.Now()
		if sum := curlSHA256(t, topo.C, flag, url); sum != want {
			t.Fatalf("%q: sha256 %s, want %s", flag, sum, want)
		}
		took := time.Since(start)
		t.Logf("%q: 4 MiB in %v", flag, took)
		if took < 3*time.Second {
			t.Errorf("%q: 4 MiB in %v at 1 MiB/s: the rate limit did not hold", flag, took)
		}
	}
}

// wantSpliced checks a tunnel's download of size bytes by the daemon's
// system calls (straceBytes): each byte is spliced twice (socket to pipe,
// pipe to socket), apart from the small bursts the relay reads into a
// buffer (the heads, the first segment, what trickles in while the loaded
// machine is slow): 90% at least, and under 10% through user space.
// Without splice it would be 0% and 200%.
func wantSpliced(t *testing.T, bytes map[string]int64, size int64) {
	t.Helper()
	t.Logf("daemon system calls during the download: %v", bytes)
	if bytes["splice"] < 2*size*90/100 {
		t.Errorf("splice moved %d bytes, want at least 90%% of %d: the tunnel did not splice", bytes["splice"], 2*size)
	}
	if other := bytes["read"] + bytes["write"] + bytes["readv"] + bytes["writev"] + bytes["recvfrom"] + bytes["sendto"] + bytes["recvmsg"] + bytes["sendmsg"]; other > size/10 {
		t.Errorf("%d bytes went through read/write system calls, want under 10%% of %d", other, size)
	}
}
