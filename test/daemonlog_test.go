//go:build linux

package test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// Access to the daemon's JSON log (zap, one object per line on stderr).

func daemonLogs() string {
	daemonMu.Lock()
	defer daemonMu.Unlock()
	if theDaemon == nil {
		return ""
	}
	return theDaemon.logs.String()
}

// logEntries parses every JSON line of the log; non-JSON lines are skipped
// (a panic trace would be, but then tests fail on missing entries anyway).
func (d *daemon) logEntries() []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(d.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// waitFlow waits (bounded) for a flow line matching match and returns it.
func (d *daemon) waitFlow(tb testing.TB, limit time.Duration, match func(map[string]any) bool) map[string]any {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for {
		for _, m := range d.logEntries() {
			if m["msg"] == "flow" && match(m) {
				return m
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no matching flow log line within %v; log:\n%s", limit, d.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// passwordLeaks lists log lines containing any password (used at exit too).
func passwordLeaks() []string {
	var leaks []string
	for _, line := range strings.Split(daemonLogs(), "\n") {
		for _, p := range allPasswords {
			if strings.Contains(line, p) {
				leaks = append(leaks, line)
				break
			}
		}
	}
	return leaks
}
