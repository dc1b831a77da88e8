package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestNilSafe: a nil *Metrics records nothing and never panics, so the
// server can call it unconditionally.
func TestNilSafe(t *testing.T) {
	var m *Metrics
	m.FlowDone("socks5", "u", "eth1", "ok", 1, 2)
	m.FlowActive("u", "eth1", 1)
	m.AuthFailure("bad_credentials")
	m.Dial("eth1", time.Millisecond, true)
	m.InterfaceStates(func() map[string]bool { return nil })
	m.Reload(true)
	m.Loaded()
	m.UDPDrop("fragmented")
	c := m.UDP("u", "eth1")
	c.Up(1, 10)
	c.Down(1, 10)
}

func TestCounters(t *testing.T) {
	m := New()
	m.FlowDone("socks5", "alice", "eth1", "ok", 100, 2000)
	m.FlowDone("socks5", "alice", "eth1", "ok", 1, 0)
	m.FlowDone("socks5", "alice", "eth1", "denied", 0, 0)
	m.FlowActive("bob", "eth2", 1)
	m.FlowActive("bob", "eth2", 1)
	m.FlowActive("bob", "eth2", -1)
	m.AuthFailure("bad_credentials")
	udp := m.UDP("bob", "eth2")
	udp.Up(1, 512)
	udp.Up(1, 512)
	udp.Down(1, 100)
	m.UDPDrop("fragmented")
	m.Reload(false)
	m.Reload(true)

	tests := []struct {
		name string
		got  float64
		want float64
	}{
		{"flows ok", testutil.ToFloat64(m.flows.WithLabelValues("socks5", "alice", "eth1", "ok")), 2},
		{"flows denied", testutil.ToFloat64(m.flows.WithLabelValues("socks5", "alice", "eth1", "denied")), 1},
		{"tcp bytes up", testutil.ToFloat64(m.bytes.WithLabelValues("alice", "eth1", "up")), 101},
		{"tcp bytes down", testutil.ToFloat64(m.bytes.WithLabelValues("alice", "eth1", "down")), 2000},
		{"active", testutil.ToFloat64(m.active.WithLabelValues("bob", "eth2")), 1},
		{"auth failures", testutil.ToFloat64(m.authFailures.WithLabelValues("bad_credentials")), 1},
		{"udp dgrams up", testutil.ToFloat64(m.udpDgrams.WithLabelValues("bob", "eth2", "up")), 2},
		{"udp bytes up", testutil.ToFloat64(m.bytes.WithLabelValues("bob", "eth2", "up")), 1024},
		{"udp bytes down", testutil.ToFloat64(m.bytes.WithLabelValues("bob", "eth2", "down")), 100},
		{"udp drops", testutil.ToFloat64(m.udpDrops.WithLabelValues("fragmented")), 1},
		{"reload failures", testutil.ToFloat64(m.reloads.WithLabelValues("failure")), 1},
		{"reload successes", testutil.ToFloat64(m.reloads.WithLabelValues("success")), 1},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	if ts := testutil.ToFloat64(m.lastReload); time.Since(time.Unix(int64(ts), 0)) > time.Minute {
		t.Errorf("last reload timestamp %v is not now", ts)
	}
}

// TestHandler scrapes the handler: names carry the ifsocks_ prefix and the
// interface gauge follows its source at scrape time.
func TestHandler(t *testing.T) {
	m := New()
	up := map[string]bool{"eth1": true, "eth9": false}
	m.InterfaceStates(func() map[string]bool { return up })
	m.FlowDone("socks5", "alice", "eth1", "ok", 5, 6)
	body := get(t, m)
	for _, want := range []string{
		`ifsocks_interface_up{interface="eth1"} 1`,
		`ifsocks_interface_up{interface="eth9"} 0`,
		`ifsocks_flows_total{interface="eth1",outcome="ok",protocol="socks5",user="alice"} 1`,
		`ifsocks_config_reloads_total{result="success"} 0`,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	up = map[string]bool{"eth1": false}
	body = get(t, m)
	if !strings.Contains(body, `ifsocks_interface_up{interface="eth1"} 0`) || strings.Contains(body, `interface="eth9"`) {
		t.Errorf("interface gauge did not follow its source:\n%s", body)
	}
}

func get(tb testing.TB, m *Metrics) string {
	tb.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return string(b)
}
