package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// tests in the order they are reported.
var testOrder = []string{"tcp-1-up", "tcp-1-down", "tcp-8-up", "tcp-8-down", "http-tcp-1-up", "http-tcp-1-down", "connrate", "http-connrate", "connrate-hook", "connrate-tw", "connrate-v6-source", "connrate-v6-pool", "tunnels", "udp"}

// document writes the whole RESULTS.md.
func (rs *results) document(w io.Writer) {
	fmt.Fprintf(w, "# ifsocks benchmark results\n\n")
	fmt.Fprintf(w, "Written by `bench/run.sh`; see `bench/README.md` for what each figure means.\n\n")
	fmt.Fprintf(w, "| | |\n| --- | --- |\n")
	for _, k := range rs.metaK {
		fmt.Fprintf(w, "| %s | %s |\n", k, strings.ReplaceAll(rs.meta[k], "\n", " "))
	}
	fmt.Fprintf(w, "\n## Summary\n\n")
	if n := rs.repeats(); n > 1 {
		fmt.Fprintf(w, "Each figure is the median of %d repeats (each test on a fresh topology, the subjects of a test taking turns); the ratios divide those medians. Every repeat's figure is under \"Repeats\" below.\n\n", n)
	}
	rs.summaryTable(w)
	rs.repeatTable(w)
	if len(rs.notes) > 0 {
		fmt.Fprintf(w, "\n## Notes\n\n")
		for _, n := range rs.notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
	rs.cpuTable(w)
	rs.rateSeries(w)
	rs.details(w)
	rs.straceSection(w)
}

// cpuTable lists the CPU time each process used in each test. "proxy
// cores" is proxy CPU divided by the test's wall time: near 2.0 the proxy
// alone fills this machine.
func (rs *results) cpuTable(w io.Writer) {
	fmt.Fprintf(w, "\n## CPU time per test (seconds)\n\n")
	fmt.Fprintf(w, "proxy = the proxy process and its children (utime+stime from /proc/<pid>/stat), of which stime (kernel: system calls, TCP stack); ")
	fmt.Fprintf(w, "servers = the upstream `ifsbench serve`; client = the load tool; ")
	fmt.Fprintf(w, "host = all busy CPU of the machine (/proc/stat): the only column that sees kernel forwarding (softirq), and on a shared machine also whatever else runs on it.\n\n")
	fmt.Fprintf(w, "| test | subject | wall | proxy | of which kernel | proxy cores | servers | client | host |\n")
	fmt.Fprintf(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	many := rs.repeats() > 1
	for _, t := range testOrder {
		for _, s := range subjects {
			for _, rec := range rs.res[s][t] {
				rs.cpuLine(w, t, s, rec, many)
			}
		}
	}
}

// cpuLine is one line of the CPU table; with repeats the subject is
// followed by the repeat's number.
func (rs *results) cpuLine(w io.Writer, t, s string, rec Record, many bool) {
	if many {
		s = fmt.Sprintf("%s #%d", s, rec.Run)
	}
	wall := wallTime(rec)
	proxy, sys, cores := "—", "—", "—"
	if v, ok := rec.CPU["proxy"]; ok {
		proxy = fmt.Sprintf("%.2f", v)
		sys = fmt.Sprintf("%.2f", rec.CPU["proxy_sys"])
		if wall > 0 {
			cores = fmt.Sprintf("%.2f", v/wall)
		}
	}
	fmt.Fprintf(w, "| %s | %s | %.1f | %s | %s | %s | %.2f | %.2f | %.2f |\n",
		t, s, wall, proxy, sys, cores, rec.CPU["server"], rec.CPU["client"], rec.CPU["host"])
}

func wallTime(rec Record) float64 {
	for _, k := range []string{"seconds", "duration", "open_seconds"} {
		if v, ok := rec.Values[k]; ok {
			return v
		}
	}
	return 0
}

// rateSeries shows the connection test second by second, so a collapse
// (ports in TIME_WAIT, descriptor exhaustion, a lock) is visible.
func (rs *results) rateSeries(w io.Writer) {
	fmt.Fprintf(w, "\n## Connections completed per second\n\n")
	many := rs.repeats() > 1
	for _, t := range []string{"connrate", "connrate-hook", "connrate-tw", "connrate-v6-source", "connrate-v6-pool"} {
		for _, s := range subjects {
			for _, rec := range rs.res[s][t] {
				rs.seriesLine(w, t, s, rec, many)
			}
		}
	}
}

func (rs *results) seriesLine(w io.Writer, t, s string, rec Record, many bool) {
	parts := make([]string, len(rec.Series))
	for i, v := range rec.Series {
		parts[i] = fmt.Sprintf("%.0f", v)
	}
	title := subjectTitle[s]
	switch t {
	case "connrate-hook":
		title += ", user from an HTTP auth hook (cached)"
	case "connrate-tw":
		title += ", proxy netns tcp_tw_reuse=1"
	case "connrate-v6-source":
		title += ", IPv6, one source_ip"
	case "connrate-v6-pool":
		title += ", IPv6, source_ips /80 with flow rotation"
	}
	if many {
		title += fmt.Sprintf(" (#%d)", rec.Run)
	}
	fmt.Fprintf(w, "- %s: %s", title, strings.Join(parts, ", "))
	if rec.Text != "" {
		fmt.Fprintf(w, " (errors: %s)", rec.Text)
	}
	fmt.Fprintln(w)
}

// details lists the raw figures of the memory and UDP tests.
func (rs *results) details(w io.Writer) {
	fmt.Fprintf(w, "\n## Memory and UDP details\n\n")
	many := rs.repeats() > 1
	name := func(s string, rec Record) string {
		if many {
			return fmt.Sprintf("%s (#%d)", subjectTitle[s], rec.Run)
		}
		return subjectTitle[s]
	}
	for _, s := range subjects {
		for _, rec := range rs.res[s]["tunnels"] {
			v := rec.Values
			fmt.Fprintf(w, "- %s tunnels: %.0f open (%.0f failed) in %.1f s; proxy RSS %.0f → %.0f KiB; host slab +%.1f KiB per tunnel (all namespaces)",
				name(s, rec), v["open"], v["failed"], v["open_seconds"], v["rss_before_kib"], v["rss_after_kib"], v["slab_per_tunnel"])
			if rec.Text != "" {
				fmt.Fprintf(w, "; errors: %s", rec.Text)
			}
			fmt.Fprintln(w)
		}
	}
	for _, s := range subjects {
		for _, rec := range rs.res[s]["udp"] {
			v := rec.Values
			fmt.Fprintf(w, "- %s UDP: %.0f sent, %.0f echoed, %.0f lost, %.0f late in %.1f s\n",
				name(s, rec), v["sent"], v["received"], v["lost"], v["late"], v["duration"])
		}
	}
}

func (rs *results) straceSection(w io.Writer) {
	if len(rs.strace) == 0 {
		return
	}
	fmt.Fprintf(w, "\n## System calls during a bulk transfer (strace -f -c)\n\n")
	fmt.Fprintf(w, "A separate transfer, not a measured one: strace slows the process down. ")
	fmt.Fprintf(w, "Two splice calls (socket → pipe, pipe → socket) move each chunk; read/write calls on the data path would mean splice did not engage. ")
	fmt.Fprintf(w, "The bare forwarder's are Go's io.Copy between two TCP connections.\n")
	for _, r := range rs.strace {
		fmt.Fprintf(w, "\n### %s, %s\n\n```text\n%s\n```\n", subjectTitle[r.Subject], r.Test, strings.TrimRight(r.Text, "\n"))
	}
}

// repeatTable lists, when tests ran more than once, every repeat's figure
// of each summary row beside its median and spread ((max - min) / median),
// so that the noise behind a ratio is in sight.
func (rs *results) repeatTable(w io.Writer) {
	n := rs.repeats()
	if n < 2 {
		return
	}
	fmt.Fprintf(w, "\n## Repeats\n\n")
	fmt.Fprintf(w, "Each repeat's figure, in the order they ran; the summary shows the median. spread = (max − min) / median.\n\n")
	head := []string{"test", "subject"}
	for i := range n {
		head = append(head, fmt.Sprintf("#%d", i+1))
	}
	head = append(head, "median", "spread")
	fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat(" --- |", len(head)))
	for _, r := range summaryRows {
		for _, s := range subjects {
			recs := rs.res[s][r.test]
			if len(recs) == 0 {
				continue
			}
			cells := []string{r.label, subjectTitle[s]}
			var vs []float64
			for i := range n {
				cell := "—"
				for _, rec := range recs {
					if v, ok := rec.Values[r.key]; ok && rec.Run == i+1 {
						cell = fmt.Sprintf(r.format, v)
						vs = append(vs, v)
					}
				}
				cells = append(cells, cell)
			}
			if len(vs) == 0 {
				continue
			}
			m := median(vs)
			spread := "—"
			if m != 0 && len(vs) > 1 {
				spread = fmt.Sprintf("%.0f %%", 100*(slices.Max(vs)-slices.Min(vs))/m)
			}
			cells = append(cells, fmt.Sprintf(r.format, m), spread)
			fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
		}
	}
}
