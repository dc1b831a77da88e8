package contrib

import (
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/metrics"
)

// servedMetrics returns the names of the metrics ifsocks serves, scraped
// from the metrics package's handler after every recording method has run
// once (a vector shows in a scrape only once it has a series). A
// histogram's series names (_bucket, _sum, _count) are included.
func servedMetrics(tb testing.TB) map[string]bool {
	tb.Helper()
	m := metrics.New()
	m.FlowDone("socks5", "u", "eth0", "ok", 1, 1)
	m.FlowActive("u", "eth0", 1)
	m.AuthFailure("bad_credentials")
	m.Dial("eth0", time.Millisecond, false)
	m.EgressSkipped("eth0", "down")
	m.InterfaceStates(func() map[string]bool { return map[string]bool{"eth0": true} })
	m.Reload(false)
	m.Loaded()
	m.UDPDrop("denied")
	m.UDP("u", "eth0").Up(1, 1)
	m.ConnRefused("not_allowed")
	m.AuthBlocked()
	m.AuthBlockedClients(func() int { return 1 })
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	names := map[string]bool{}
	typeLine := regexp.MustCompile(`(?m)^# TYPE (\S+) (\S+)$`)
	for _, t := range typeLine.FindAllStringSubmatch(string(body), -1) {
		names[t[1]] = true
		if t[2] == "histogram" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[t[1]+s] = true
			}
		}
	}
	if !names["ifsocks_flows_total"] {
		tb.Fatalf("scrape lacks ifsocks_flows_total:\n%s", body)
	}
	return names
}

var metricName = regexp.MustCompile(`\bifsocks_[a-z0-9_]+`)

// wantServed checks that every ifsocks_ name in text is served.
func wantServed(tb testing.TB, file, text string, served map[string]bool) {
	tb.Helper()
	found := metricName.FindAllString(text, -1)
	if len(found) == 0 {
		tb.Fatalf("%s names no ifsocks metric", file)
	}
	for _, n := range found {
		if !served[n] {
			tb.Errorf("%s: %s is not a metric ifsocks serves", file, n)
		}
	}
}

func TestAlertMetrics(t *testing.T) {
	text, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	wantServed(t, "alerts.yml", string(text), servedMetrics(t))
}

type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name string `json:"name"`
			Type string `json:"type"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

var panelTypes = []string{"row", "timeseries", "stat", "state-timeline", "gauge", "table", "bargauge"}

// TestDashboard checks grafana/ifsocks.json: strict JSON of the shape
// Grafana imports (title, uid, schemaVersion, panels with unique ids, a
// known type, a place on the 24-column grid, the templated Prometheus
// data source), every variable a query uses defined, and every metric a
// query names served by ifsocks.
func TestDashboard(t *testing.T) {
	raw, err := os.ReadFile("grafana/ifsocks.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("ifsocks.json: %v", err)
	}
	if d.Title == "" || d.UID == "" || d.SchemaVersion < 30 || len(d.Panels) == 0 {
		t.Fatalf("dashboard title %q uid %q schemaVersion %d, %d panels", d.Title, d.UID, d.SchemaVersion, len(d.Panels))
	}
	vars := map[string]bool{"__rate_interval": true}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	served := servedMetrics(t)
	ids := map[int]bool{}
	varRef := regexp.MustCompile(`\$\{?(\w+)`)
	for _, p := range d.Panels {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %d missing or not unique", p.Title, p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if p.Title == "" || !slices.Contains(panelTypes, p.Type) || g.W < 1 || g.H < 1 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %d %q: type %q, gridPos %+v", p.ID, p.Title, p.Type, g)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, q := range p.Targets {
			if q.RefID == "" || refs[q.RefID] || strings.TrimSpace(q.Expr) == "" {
				t.Errorf("panel %q: query %q refId %q", p.Title, q.Expr, q.RefID)
			}
			refs[q.RefID] = true
			wantServed(t, p.Title, q.Expr, served)
			for _, m := range varRef.FindAllStringSubmatch(q.Expr, -1) {
				if !vars[m[1]] {
					t.Errorf("panel %q: variable $%s is not defined", p.Title, m[1])
				}
			}
		}
	}
}
