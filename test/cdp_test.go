//go:build linux

package test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A minimal Chrome DevTools Protocol client over --remote-debugging-pipe
// (commands on the browser's fd 3, answers and events on fd 4, each
// message a JSON object ended by a NUL), enough to answer a proxy's
// authentication challenge as a user would: Fetch.authRequired ->
// Fetch.continueWithAuth.

type cdpMsg struct {
	ID        int64           `json:"id,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

type cdpClient struct {
	w      *os.File
	mu     sync.Mutex
	nextID int64
	events chan cdpMsg
	mu2    sync.Mutex
	wait   map[int64]chan cdpMsg
}

func (c *cdpClient) readLoop(r *os.File) {
	defer close(c.events)
	br := bufio.NewReader(r)
	for {
		b, err := br.ReadBytes(0)
		if err != nil {
			return
		}
		var m cdpMsg
		if json.Unmarshal(b[:len(b)-1], &m) != nil {
			continue
		}
		if m.ID != 0 {
			c.mu2.Lock()
			ch := c.wait[m.ID]
			delete(c.wait, m.ID)
			c.mu2.Unlock()
			if ch != nil {
				ch <- m
			}
			continue
		}
		c.events <- m
	}
}

// send writes a command and returns the channel its answer will come on.
func (c *cdpClient) send(session, method string, params any) (<-chan cdpMsg, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID++
	p, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	ch := make(chan cdpMsg, 1)
	c.mu2.Lock()
	c.wait[c.nextID] = ch
	c.mu2.Unlock()
	b, err := json.Marshal(cdpMsg{ID: c.nextID, Method: method, Params: p, SessionID: session})
	if err != nil {
		return nil, err
	}
	_, err = c.w.Write(append(b, 0))
	return ch, err
}

// call sends a command and waits for its answer, handling events meanwhile
// with onEvent.
func (c *cdpClient) call(ctx context.Context, session, method string, params any, onEvent func(cdpMsg)) (json.RawMessage, error) {
	ch, err := c.send(session, method, params)
	if err != nil {
		return nil, err
	}
	for {
		select {
		case m := <-ch:
			if m.Error != nil {
				return nil, fmt.Errorf("%s: %s", method, m.Error.Message)
			}
			return m.Result, nil
		case ev, ok := <-c.events:
			if !ok {
				return nil, fmt.Errorf("%s: browser closed the pipe", method)
			}
			onEvent(ev)
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: %w", method, ctx.Err())
		}
	}
}

// chromiumWithAuth loads url in headless Chromium in ns through the HTTP
// proxy, answering proxy challenges with user and pass, and returns the
// text of the element with id "seen" and how many challenges it answered.
// flags are more Chromium flags.
func chromiumWithAuth(t *testing.T, bin, ns, proxy, user, pass, url string, limit time.Duration, flags ...string) (string, int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	home := t.TempDir()
	// Pipes: we write commands to cmdW (the browser's fd 3) and read
	// from outR (its fd 4).
	cmdR, cmdW, err := os.Pipe()
	if err != nil {
		return "", 0, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return "", 0, err
	}
	args := []string{"netns", "exec", ns, bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage", "--no-pings",
		"--disable-breakpad", "--disable-features=NetworkTimeServiceQuerying",
		"--user-data-dir=" + filepath.Join(home, "profile"),
		"--proxy-server=http://" + proxy,
	}
	args = append(append(args, flags...), "--remote-debugging-pipe", "about:blank")
	cmd := exec.Command("ip", args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=" + home,
		"XDG_CONFIG_HOME=" + filepath.Join(home, ".config"), "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
	cmd.ExtraFiles = []*os.File{cmdR, outW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "", 0, err
	}
	cmdR.Close()
	outW.Close()
	c := &cdpClient{w: cmdW, events: make(chan cdpMsg, 64), wait: map[int64]chan cdpMsg{}}
	go c.readLoop(outR)
	defer func() {
		cmdW.Close()
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		outR.Close()
		if t.Failed() {
			t.Logf("chromium stderr (tail):\n%s", tail(stderr.String(), 20))
		}
	}()

	var session string
	challenges := 0
	loaded := false
	var evErr error
	onEvent := func(ev cdpMsg) {
		switch ev.Method {
		case "Fetch.requestPaused":
			var p struct {
				RequestID string `json:"requestId"`
			}
			_ = json.Unmarshal(ev.Params, &p)
			_, evErr = c.send(session, "Fetch.continueRequest", map[string]any{"requestId": p.RequestID})
		case "Fetch.authRequired":
			var p struct {
				RequestID     string `json:"requestId"`
				AuthChallenge struct {
					Source string `json:"source"`
					Realm  string `json:"realm"`
				} `json:"authChallenge"`
			}
			_ = json.Unmarshal(ev.Params, &p)
			resp := map[string]any{"response": "CancelAuth"}
			if p.AuthChallenge.Source == "Proxy" && p.AuthChallenge.Realm == "ifsocks" {
				challenges++
				resp = map[string]any{"response": "ProvideCredentials", "username": user, "password": pass}
			}
			_, evErr = c.send(session, "Fetch.continueWithAuth", map[string]any{"requestId": p.RequestID, "authChallengeResponse": resp})
		case "Page.loadEventFired":
			loaded = true
		}
	}
	res, err := c.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, onEvent)
	if err != nil {
		return "", 0, err
	}
	var target struct {
		TargetID string `json:"targetId"`
	}
	_ = json.Unmarshal(res, &target)
	res, err = c.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, onEvent)
	if err != nil {
		return "", 0, err
	}
	var att struct {
		SessionID string `json:"sessionId"`
	}
	_ = json.Unmarshal(res, &att)
	session = att.SessionID
	for _, step := range []struct {
		method string
		params any
	}{
		{"Fetch.enable", map[string]any{"handleAuthRequests": true}},
		{"Page.enable", map[string]any{}},
		{"Page.navigate", map[string]any{"url": url}},
	} {
		if _, err := c.call(ctx, session, step.method, step.params, onEvent); err != nil {
			return "", challenges, err
		}
	}
	for !loaded && evErr == nil {
		select {
		case ev, ok := <-c.events:
			if !ok {
				return "", challenges, errors.New("browser closed the pipe before the page loaded")
			}
			onEvent(ev)
		case <-ctx.Done():
			return "", challenges, fmt.Errorf("page load: %w", ctx.Err())
		}
	}
	if evErr != nil {
		return "", challenges, evErr
	}
	res, err = c.call(ctx, session, "Runtime.evaluate", map[string]any{
		"expression": `(document.getElementById("seen") || {}).textContent || document.title`, "returnByValue": true}, onEvent)
	if err != nil {
		return "", challenges, err
	}
	var ev struct {
		Result struct {
			Value string `json:"value"`
		} `json:"result"`
	}
	_ = json.Unmarshal(res, &ev)
	return ev.Result.Value, challenges, nil
}

// Chromium cannot send SOCKS5 credentials; through the HTTP proxy on the
// same port it logs in as a user, who leaves by the user's NIC.
func TestHTTPProxyChromiumPassword(t *testing.T) {
	bin := chromiumPath(t)
	topo := newEgressTopology(t)
	startEgressWhoami(t, topo)
	od := startEgressDaemon(t, topo, httpProxyConfig(), egHTTPListen)
	url := "http://" + egTarget + "/page"
	seen, challenges, err := chromiumWithAuth(t, bin, topo.C, egHTTPListen, egSid.Name, egSid.Password, url, 60*time.Second)
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	if seen != seenWan2 {
		t.Errorf("page shows %q, want %q (sid's NIC)", seen, seenWan2)
	}
	if challenges == 0 {
		t.Errorf("the browser answered no proxy challenge: the page came without authentication")
	}
	line := od.waitFlow(t, 5*time.Second, func(m map[string]any) bool { return m["target"] == egTarget && m["status"] == float64(200) })
	wantFields(t, line, map[string]any{"protocol": "http", "user": egSid.Name, "interface": "wan2"})
}

// Chromium reaches an https origin through CONNECT with a password given
// at the proxy's challenge: the TLS session is the browser's own, end to
// end, and the tunnel leaves by the user's NIC.
func TestHTTPProxyChromiumHTTPS(t *testing.T) {
	bin := chromiumPath(t)
	topo := newEgressTopologyAs(t, "h13b")
	startHTTPSOrigin(t, topo)
	od := startEgressDaemon(t, topo, httpProxyConfig(), egHTTPListen)
	target := net.JoinHostPort(egSvc, egHTTPSPort)
	seen, challenges, err := chromiumWithAuth(t, bin, topo.C, egHTTPListen, egSid.Name, egSid.Password,
		"https://"+target+"/page", 60*time.Second, "--ignore-certificate-errors")
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	if want := egWan2 + " tls"; seen != want {
		t.Errorf("page shows %q, want %q (over TLS, from sid's NIC)", seen, want)
	}
	if challenges == 0 {
		t.Errorf("the browser answered no proxy challenge: the tunnel opened without authentication")
	}
	// The tunnel's line comes when the browser is gone (killed: outcome
	// reset), with the bytes of the TLS session.
	line := od.waitFlow(t, 10*time.Second, func(m map[string]any) bool { return m["target"] == target && m["status"] == float64(200) })
	wantFields(t, line, map[string]any{"protocol": "http-connect", "user": egSid.Name, "interface": "wan2", "method": "CONNECT"})
	if down, _ := line["bytes_down"].(float64); down == 0 {
		t.Errorf("tunnel carried no bytes down: %v", line)
	}
}
