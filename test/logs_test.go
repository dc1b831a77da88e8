//go:build linux

package test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

// Test 5: the flow line of one known alice flow carries the exact values,
// and no log line contains any password (after exercising every auth path).
func TestFlowLog(t *testing.T) {
	e, d := getDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// One flow with the raw client: we know its client port and the exact
	// byte counts in both directions.
	res, err := socksDo(ctx, e.topo.C, socksRequest{proxy: proxyListen4, user: "alice", pass: alicePass, target: "10.231.9.9:8080"})
	if err != nil || res.reply != 0 {
		t.Fatalf("alice CONNECT: reply %d, %v", res.reply, err)
	}
	client := res.localAddr
	request := "GET / HTTP/1.0\r\nHost: 10.231.9.9\r\n\r\n"
	_ = res.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(res.conn, request); err != nil {
		t.Fatal(err)
	}
	response, err := io.ReadAll(res.conn) // HTTP/1.0: server closes
	res.conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(response), "\r\n\r\n"+wan1V4+"\n") {
		t.Fatalf("response %q does not end with body %q", response, wan1V4)
	}

	flow := d.waitFlow(t, 5*time.Second, func(m map[string]any) bool { return m["client"] == client })
	for field, want := range map[string]any{
		"user":       "alice",
		"client":     client,
		"target":     "10.231.9.9:8080",
		"remote":     "10.231.9.9:8080",
		"interface":  "wan1",
		"bytes_up":   float64(len(request)),
		"bytes_down": float64(len(response)),
	} {
		if flow[field] != want {
			t.Errorf("flow %s = %#v, want %#v", field, flow[field], want)
		}
	}
	if local, _ := flow["local"].(string); !strings.HasPrefix(local, wan1V4+":") {
		t.Errorf("flow local = %#v, want %s:<port>", flow["local"], wan1V4)
	}
	if flow["reply"] != float64(0) {
		t.Errorf("flow reply = %#v, want 0 (succeeded)", flow["reply"])
	}
	for _, f := range []string{"duration", "outcome"} {
		if s, _ := flow[f].(string); s == "" {
			t.Errorf("flow %s = %#v, want a non-empty string", f, flow[f])
		}
	}
	if t.Failed() {
		t.Logf("flow line: %v", flow)
	}

	// Every credential path once more, then scan the whole log. carol's
	// refused flow is logged too, with her interface and reply 0x03.
	var carolClient string
	for _, r := range []socksRequest{
		{user: "alice", pass: wrongPass}, {user: "mallory", pass: wrongPass},
		{user: "bob", pass: bobPass}, {user: "carol", pass: carolPass},
	} {
		r.proxy, r.target = proxyListen4, "10.231.9.9:8080"
		res, err := socksDo(ctx, e.topo.C, r)
		if err != nil {
			t.Fatalf("%s: %v", r.user, err)
		}
		if r.user == "carol" {
			carolClient = res.localAddr
		}
		if res.conn != nil {
			res.conn.Close()
		}
	}
	carol := d.waitFlow(t, 5*time.Second, func(m map[string]any) bool { return m["client"] == carolClient })
	if carol["user"] != "carol" || carol["interface"] != "nosuch0" || carol["reply"] != float64(3) {
		t.Errorf("carol flow: user %#v interface %#v reply %#v, want carol, nosuch0, 3", carol["user"], carol["interface"], carol["reply"])
	}
	if leaks := passwordLeaks(); len(leaks) > 0 {
		t.Errorf("log lines contain passwords:\n%s", strings.Join(leaks, "\n"))
	}
	if !strings.Contains(d.logs.String(), `"msg":"listening"`) {
		t.Errorf("no \"listening\" line in the log")
	}
}
