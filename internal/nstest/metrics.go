package nstest

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Sample is one line of the Prometheus text format.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Metrics are the samples of a scrape.
type Metrics []Sample

// ParseMetrics parses the Prometheus text exposition format, one Sample
// per line (histogram buckets, sums and counts included; no timestamps
// expected).
func ParseMetrics(text string) (Metrics, error) {
	var out Metrics
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := Sample{Labels: map[string]string{}}
		rest := line
		if j := strings.IndexAny(rest, "{ "); j < 0 {
			return nil, fmt.Errorf("line %d: %q: no value", i+1, line)
		} else {
			s.Name, rest = rest[:j], rest[j:]
		}
		if strings.HasPrefix(rest, "{") {
			rest = rest[1:]
			for {
				rest = strings.TrimLeft(rest, ", ")
				if strings.HasPrefix(rest, "}") {
					rest = rest[1:]
					break
				}
				eq := strings.Index(rest, `="`)
				if eq < 0 {
					return nil, fmt.Errorf("line %d: %q: bad label", i+1, line)
				}
				key := rest[:eq]
				rest = rest[eq+2:]
				var val strings.Builder
				closed := false
				for k := 0; k < len(rest); k++ {
					c := rest[k]
					if c == '\\' && k+1 < len(rest) {
						k++
						switch rest[k] {
						case 'n':
							val.WriteByte('\n')
						default:
							val.WriteByte(rest[k])
						}
						continue
					}
					if c == '"' {
						rest = rest[k+1:]
						closed = true
						break
					}
					val.WriteByte(c)
				}
				if !closed {
					return nil, fmt.Errorf("line %d: %q: unterminated label value", i+1, line)
				}
				s.Labels[key] = val.String()
			}
		}
		fields := strings.Fields(rest)
		if len(fields) < 1 {
			return nil, fmt.Errorf("line %d: %q: no value", i+1, line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: %q: %v", i+1, line, err)
		}
		s.Value = v
		out = append(out, s)
	}
	return out, nil
}

// Get returns the value of the sample with exactly these labels.
func (pm Metrics) Get(name string, labels map[string]string) (float64, bool) {
	for _, s := range pm {
		if s.Name != name || len(s.Labels) != len(labels) {
			continue
		}
		match := true
		for k, v := range labels {
			if s.Labels[k] != v {
				match = false
				break
			}
		}
		if match {
			return s.Value, true
		}
	}
	return 0, false
}

// Series returns every sample of name.
func (pm Metrics) Series(name string) []Sample {
	var out []Sample
	for _, s := range pm {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// HTTPGet performs a GET from namespace ns (the URL's host an IP
// literal) and returns status and body.
func HTTPGet(ns, url string) (int, string, error) {
	tr := &http.Transport{DialContext: Dialer{NS: ns, Timeout: 5 * time.Second}.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// ScrapeErr fetches and parses http://ADDR/metrics from inside ns.
func ScrapeErr(ns, addr string) (Metrics, error) {
	code, body, err := HTTPGet(ns, "http://"+addr+"/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics on %s: status %d", addr, code)
	}
	return ParseMetrics(body)
}

// Scrape is ScrapeErr failing the test.
func Scrape(tb testing.TB, ns, addr string) Metrics {
	tb.Helper()
	pm, err := ScrapeErr(ns, addr)
	if err != nil {
		tb.Fatalf("scrape %s: %v", addr, err)
	}
	return pm
}

// WantMetric checks one sample's exact value; a missing sample fails.
func WantMetric(tb testing.TB, pm Metrics, name string, labels map[string]string, want float64) {
	tb.Helper()
	got, ok := pm.Get(name, labels)
	if !ok {
		tb.Errorf("%s%v: no such sample, want %v", name, labels, want)
		return
	}
	if got != want {
		tb.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}
