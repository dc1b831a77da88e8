package main

import (
	"strings"
	"testing"
)

// runRecords is a run of two repeats: kernel, bare and ifsocks on the
// one-stream upload; bare, bare-socks5 and ifsocks on the connection
// rate (proxy CPU 132, 150 and 198 µs per connection); bare and
// bare-socks5 skip what they do not run.
const runRecords = `
{"kind":"result","subject":"kernel","test":"tcp-1-up","values":{"mbps":1000},"run":1}
{"kind":"result","subject":"bare","test":"tcp-1-up","values":{"mbps":800},"run":1}
{"kind":"result","subject":"ifsocks","test":"tcp-1-up","values":{"mbps":400},"run":1}
{"kind":"result","subject":"kernel","test":"tcp-1-up","values":{"mbps":3000},"run":2}
{"kind":"result","subject":"bare","test":"tcp-1-up","values":{"mbps":1200},"run":2}
{"kind":"result","subject":"ifsocks","test":"tcp-1-up","values":{"mbps":600},"run":2}
{"kind":"result","subject":"bare","test":"connrate","values":{"rate":7000,"ok":10000},"cpu":{"proxy":1.32},"run":1}
{"kind":"result","subject":"bare-socks5","test":"connrate","values":{"rate":6000,"ok":10000},"cpu":{"proxy":1.5},"run":1}
{"kind":"result","subject":"ifsocks","test":"connrate","values":{"rate":4800,"ok":10000},"cpu":{"proxy":1.98},"run":1}
{"kind":"result","subject":"bare","test":"connrate","values":{"rate":7400,"ok":10000},"cpu":{"proxy":1.32},"run":2}
{"kind":"result","subject":"bare-socks5","test":"connrate","values":{"rate":6400,"ok":10000},"cpu":{"proxy":1.5},"run":2}
{"kind":"result","subject":"ifsocks","test":"connrate","values":{"rate":5200,"ok":10000},"cpu":{"proxy":1.98},"run":2}
{"kind":"skip","subject":"bare","test":"tunnels","text":"not run"}
{"kind":"skip","subject":"bare-socks5","test":"tcp-1-up","text":"as bare"}
{"kind":"skip","subject":"dante","test":"*","text":"not installed"}
`

func TestReportMediansAndRatios(t *testing.T) {
	rs, err := loadResults(strings.NewReader(runRecords))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	rs.document(&b)
	doc := b.String()
	for _, want := range []string{
		// Columns: no ifsocks-before (no --before), no accounting.
		"| test | kernel forwarding | bare forwarder | bare SOCKS5 relay | ifsocks | Dante | ifsocks ÷ kernel | ifsocks ÷ bare forwarder | ifsocks ÷ bare SOCKS5 | ifsocks ÷ best peer |",
		// Medians of two repeats (means of the pair), ratio of medians:
		// 500/2000, 500/1000; bare-socks5 did not run it ("—").
		"| TCP 1 stream upload, Mbit/s | 2000 | 1000 | as bare | 500 | not installed | 0.25× | 0.50× | — | — |",
		// The connection rate: 5000/7200 and 5000/6200; CPU per
		// connection 198/132 and 198/150.
		"| connections/s (c=50, auth, 64 B echo) | — | 7200 | 6200 | 5000 | not installed | — | 0.69× | 0.81× | — |",
		"| proxy CPU per connection, µs | — | 132 | 150 | 198 | not installed | — | 1.50× | 1.32× | — |",
		// A row neither bare subject applies to.
		"| RSS per idle tunnel, KiB | — | not run | — | — | not installed | — | — | — | — |",
		"## Repeats",
		"| TCP 1 stream upload, Mbit/s | bare forwarder | 800 | 1200 | 1000 | 40 % |",
		"| connections/s (c=50, auth, 64 B echo) | bare SOCKS5 relay | 6000 | 6400 | 6200 | 6 % |",
		"| tcp-1-up | ifsocks #2 |",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("report lacks %q:\n%s", want, doc)
		}
	}
}

func TestReportOneRunHasNoRepeats(t *testing.T) {
	rs, err := loadResults(strings.NewReader(`{"kind":"result","subject":"ifsocks","test":"udp","values":{"dps":10}}
{"kind":"result","subject":"ifsocks-before","test":"udp","values":{"dps":5}}`))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	rs.document(&b)
	doc := b.String()
	if strings.Contains(doc, "## Repeats") || strings.Contains(doc, "#1") {
		t.Errorf("one run shows repeats:\n%s", doc)
	}
	for _, want := range []string{
		"| test | ifsocks | ifsocks before | after ÷ before |",
		"| UDP 512 B datagrams/s (window 64) | 10 | 5 | 2.00× |",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("report lacks %q:\n%s", want, doc)
		}
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{[]float64{5}, 5},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{9, 1, 1}, 1},
	}
	for _, tt := range tests {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestReportCPUPerUnit(t *testing.T) {
	rs, err := loadResults(strings.NewReader(`{"kind":"result","subject":"bare","test":"tcp-1-down","values":{"mbps":8000,"bytes":1e10},"cpu":{"proxy":5}}
{"kind":"result","subject":"ifsocks","test":"tcp-1-down","values":{"mbps":8000,"bytes":5e9},"cpu":{"proxy":5}}
{"kind":"result","subject":"ifsocks","test":"connrate","values":{"rate":1000,"ok":10000},"cpu":{"proxy":2}}`))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	rs.summaryTable(&b)
	for _, want := range []string{
		"| proxy CPU per GB, TCP 1 stream download, s | 0.50 | 1.00 | 2.00× |",
		"| proxy CPU per connection, µs | — | 200 | — |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
}
