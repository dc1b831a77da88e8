package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// subjects in column order. kernel is the proxy namespace forwarding in
// the kernel with no proxy at all; bare is ifsbare, a forwarder with no
// protocol (the ceiling of a user-space relay); bare-socks5 is ifsbare
// -socks5, the least a SOCKS5 CONNECT relay with RFC 1929 login does (the
// ceiling of a relay that speaks the protocol; connection rows only);
// ifsocks-before is ifsocks
// built at run.sh --before REV, with ifsocks's configuration.
// ifsocks-acct is ifsocks with [accounting] on (an SQLite file, the
// default flush interval): throughput and connection rate only.
var subjects = []string{"kernel", "bare", "bare-socks5", "ifsocks", "ifsocks-before", "ifsocks-acct", "dante", "microsocks"}

var subjectTitle = map[string]string{
	"kernel":         "kernel forwarding",
	"bare":           "bare forwarder",
	"bare-socks5":    "bare SOCKS5 relay",
	"ifsocks":        "ifsocks",
	"ifsocks-before": "ifsocks before",
	"ifsocks-acct":   "ifsocks, accounting on",
	"dante":          "Dante",
	"microsocks":     "microsocks",
}

var peers = []string{"dante", "microsocks"}

// row is one line of the summary table.
type row struct {
	label  string
	test   string
	key    string
	format string
	higher bool // a higher value is better
}

var summaryRows = []row{
	{"TCP 1 stream upload, Mbit/s", "tcp-1-up", "mbps", "%.0f", true},
	{"TCP 1 stream download, Mbit/s", "tcp-1-down", "mbps", "%.0f", true},
	{"TCP 8 streams upload, Mbit/s", "tcp-8-up", "mbps", "%.0f", true},
	{"TCP 8 streams download, Mbit/s", "tcp-8-down", "mbps", "%.0f", true},
	{"proxy CPU per GB, TCP 1 stream upload, s", "tcp-1-up", "proxy_s_per_gb", "%.2f", false},
	{"proxy CPU per GB, TCP 1 stream download, s", "tcp-1-down", "proxy_s_per_gb", "%.2f", false},
	{"proxy CPU per GB, TCP 8 streams upload, s", "tcp-8-up", "proxy_s_per_gb", "%.2f", false},
	{"proxy CPU per GB, TCP 8 streams download, s", "tcp-8-down", "proxy_s_per_gb", "%.2f", false},
	{"HTTP CONNECT: TCP 1 stream upload, Mbit/s", "http-tcp-1-up", "mbps", "%.0f", true},
	{"HTTP CONNECT: TCP 1 stream download, Mbit/s", "http-tcp-1-down", "mbps", "%.0f", true},
	{"connections/s (c=50, auth, 64 B echo)", "connrate", "rate", "%.0f", true},
	{"HTTP CONNECT: connections/s (c=50, Basic auth, 64 B echo)", "http-connrate", "rate", "%.0f", true},
	{"HTTP CONNECT: proxy CPU per connection, µs", "http-connrate", "proxy_us", "%.0f", false},
	{"proxy CPU per connection, µs", "connrate", "proxy_us", "%.0f", false},
	{"connection p50 latency, ms", "connrate", "p50_ms", "%.2f", false},
	{"connection p99 latency, ms", "connrate", "p99_ms", "%.2f", false},
	{"connections in the first second", "connrate", "first_s", "%.0f", true},
	{"connections in the last second", "connrate", "last_s", "%.0f", true},
	{"failed connections", "connrate", "errors", "%.0f", false},
	{"connections/s, user from an HTTP auth hook (cached)", "connrate-hook", "rate", "%.0f", true},
	{"proxy CPU per connection, hook user, µs", "connrate-hook", "proxy_us", "%.0f", false},
	{"connections/s, proxy netns tcp_tw_reuse=1", "connrate-tw", "rate", "%.0f", true},
	{"… in the last second", "connrate-tw", "last_s", "%.0f", true},
	{"proxy CPU per connection (tcp_tw_reuse=1), µs", "connrate-tw", "proxy_us", "%.0f", false},
	{"connections/s, IPv6, one source_ip", "connrate-v6-source", "rate", "%.0f", true},
	{"proxy CPU per connection, IPv6 one source_ip, µs", "connrate-v6-source", "proxy_us", "%.0f", false},
	{"connections/s, IPv6, source_ips /80 (flow rotation)", "connrate-v6-pool", "rate", "%.0f", true},
	{"… in the last second", "connrate-v6-pool", "last_s", "%.0f", true},
	{"proxy CPU per connection, IPv6 /80 pool, µs", "connrate-v6-pool", "proxy_us", "%.0f", false},
	{"RSS per idle tunnel, KiB", "tunnels", "kib_per_tunnel", "%.1f", false},
	{"PSS per idle tunnel, KiB", "tunnels", "pss_per_tunnel", "%.1f", false},
	{"descriptors per idle tunnel", "tunnels", "fds_per_tunnel", "%.1f", false},
	{"UDP 512 B datagrams/s (window 64)", "udp", "dps", "%.0f", true},
	{"UDP loss, %", "udp", "loss_pct", "%.3f", false},
	{"proxy CPU per UDP round trip, µs", "udp", "proxy_us", "%.1f", false},
}

// perUnit names, for the tests that have one, the value counting what a
// test did (datagrams echoed, connections completed): add derives from
// it proxy_us, the proxy's CPU time in microseconds per unit. On a shared
// machine that drifts far less than a rate, which also counts the time
// the proxy spent waiting for a core.
var perUnit = map[string]string{"udp": "received", "connrate": "ok", "http-connrate": "ok", "connrate-tw": "ok", "connrate-hook": "ok", "connrate-v6-source": "ok", "connrate-v6-pool": "ok"}

// results is a run's records, indexed.
type results struct {
	res    map[string]map[string][]Record // subject -> test -> one per repeat, in order
	skip   map[string]map[string]string   // subject -> test ("*") -> reason
	meta   map[string]string
	metaK  []string // meta keys in file order
	strace []Record
	notes  []string
}

func loadResults(r io.Reader) (*results, error) {
	rs := &results{res: map[string]map[string][]Record{}, skip: map[string]map[string]string{}, meta: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 4<<20)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		rs.add(rec)
	}
	return rs, sc.Err()
}

func (rs *results) add(rec Record) {
	switch rec.Kind {
	case "result":
		if n := rec.Values[perUnit[rec.Test]]; n > 0 {
			if cpu, ok := rec.CPU["proxy"]; ok {
				rec.Values["proxy_us"] = cpu * 1e6 / n
			}
		}
		// Throughput tests: proxy CPU seconds per GB moved, which a
		// busy neighbour distorts far less than Mbit/s.
		if b := rec.Values["bytes"]; b > 0 && strings.Contains(rec.Test, "tcp-") {
			if cpu, ok := rec.CPU["proxy"]; ok {
				rec.Values["proxy_s_per_gb"] = cpu / (b / 1e9)
			}
		}
		rec.Run = max(rec.Run, 1)
		if rs.res[rec.Subject] == nil {
			rs.res[rec.Subject] = map[string][]Record{}
		}
		recs := append(rs.res[rec.Subject][rec.Test], rec)
		slices.SortStableFunc(recs, func(a, b Record) int { return cmp.Compare(a.Run, b.Run) })
		rs.res[rec.Subject][rec.Test] = recs
	case "skip":
		if rs.skip[rec.Subject] == nil {
			rs.skip[rec.Subject] = map[string]string{}
		}
		rs.skip[rec.Subject][rec.Test] = rec.Text
	case "meta":
		if _, ok := rs.meta[rec.Key]; !ok {
			rs.metaK = append(rs.metaK, rec.Key)
		}
		rs.meta[rec.Key] = rec.Text
	case "strace":
		rs.strace = append(rs.strace, rec)
	case "note":
		rs.notes = append(rs.notes, rec.Text)
	}
}

// value is the median of a figure over the repeats of a test: every
// cell of the summary, and so every ratio, which divides the medians of
// one run.
func (rs *results) value(subject, test, key string) (float64, bool) {
	vs := rs.values(subject, test, key)
	if len(vs) == 0 {
		return 0, false
	}
	return median(vs), true
}

// values is a figure in each repeat of a test, in repeat order.
func (rs *results) values(subject, test, key string) []float64 {
	var vs []float64
	for _, rec := range rs.res[subject][test] {
		if v, ok := rec.Values[key]; ok {
			vs = append(vs, v)
		}
	}
	return vs
}

// median of vs; of an even count, the mean of the middle two.
func median(vs []float64) float64 {
	s := slices.Sorted(slices.Values(vs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// shown reports whether a subject has a column: it has a result, or
// run.sh said why it has none. A subject run.sh never mentions (the
// before build without --before) has no column.
func (rs *results) shown(subject string) bool {
	return len(rs.res[subject]) > 0 || len(rs.skip[subject]) > 0
}

// columns are the subjects with a column, in order.
func (rs *results) columns() []string {
	var out []string
	for _, s := range subjects {
		if rs.shown(s) {
			out = append(out, s)
		}
	}
	return out
}

// repeats is the most repeats any test of the run had.
func (rs *results) repeats() int {
	n := 0
	for _, tests := range rs.res {
		for _, recs := range tests {
			n = max(n, len(recs))
		}
	}
	return n
}

// cell is a figure, or why there is none.
func (rs *results) cell(subject string, r row) string {
	if v, ok := rs.value(subject, r.test, r.key); ok {
		return fmt.Sprintf(r.format, v)
	}
	if why, ok := rs.skip[subject][r.test]; ok {
		return why
	}
	if why, ok := rs.skip[subject]["*"]; ok {
		return why
	}
	return "—"
}

// bestPeer is the best peer figure of a row and whose it is.
func (rs *results) bestPeer(r row) (float64, string, bool) {
	var best float64
	var who string
	for _, p := range peers {
		v, ok := rs.value(p, r.test, r.key)
		if !ok {
			continue
		}
		if who == "" || (r.higher && v > best) || (!r.higher && v < best) {
			best, who = v, p
		}
	}
	return best, who, who != ""
}

func ratio(a, b float64, ok bool) string {
	if !ok || b == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// ratioCol is a column of the summary dividing one subject's median by
// another's; it is shown when both subjects have a column.
type ratioCol struct {
	title    string
	num, den string
}

var ratioCols = []ratioCol{
	{"ifsocks ÷ kernel", "ifsocks", "kernel"},
	{"ifsocks ÷ bare forwarder", "ifsocks", "bare"},
	{"ifsocks ÷ bare SOCKS5", "ifsocks", "bare-socks5"},
	{"after ÷ before", "ifsocks", "ifsocks-before"},
	{"ifsocks ÷ best peer", "ifsocks", ""}, // den "": the better of Dante and microsocks
	{"accounting on ÷ off", "ifsocks-acct", "ifsocks"},
}

func (rs *results) ratioCols() []ratioCol {
	var out []ratioCol
	for _, c := range ratioCols {
		if !rs.shown(c.num) {
			continue
		}
		if c.den == "" && !slices.ContainsFunc(peers, rs.shown) || c.den != "" && !rs.shown(c.den) {
			continue
		}
		out = append(out, c)
	}
	return out
}

// summaryTable is the Markdown table printed by run.sh and put at the top
// of RESULTS.md: the median of each figure over the repeats.
func (rs *results) summaryTable(w io.Writer) {
	cols, rcols := rs.columns(), rs.ratioCols()
	head := []string{"test"}
	for _, s := range cols {
		head = append(head, subjectTitle[s])
	}
	for _, c := range rcols {
		head = append(head, c.title)
	}
	fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat(" --- |", len(head)))
	for _, r := range summaryRows {
		cells := []string{r.label}
		for _, s := range cols {
			cells = append(cells, rs.cell(s, r))
		}
		for _, c := range rcols {
			cells = append(cells, rs.ratioCell(c, r))
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
}

func (rs *results) ratioCell(c ratioCol, r row) string {
	a, okA := rs.value(c.num, r.test, r.key)
	if c.den != "" {
		b, okB := rs.value(c.den, r.test, r.key)
		return ratio(a, b, okA && okB)
	}
	best, who, okP := rs.bestPeer(r)
	out := ratio(a, best, okA && okP)
	if out != "—" {
		out += " (" + subjectTitle[who] + ")"
	}
	return out
}

func reportCmd(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	in := fs.String("in", "", "results file (JSON lines) of a run")
	out := fs.String("out", "", "Markdown file to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	defer f.Close()
	rs, err := loadResults(f)
	if err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	rs.summaryTable(os.Stdout)
	if *out == "" {
		return nil
	}
	var b strings.Builder
	rs.document(&b)
	return os.WriteFile(*out, []byte(b.String()), 0o644)
}
