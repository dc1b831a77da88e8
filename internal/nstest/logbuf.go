package nstest

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

// LogBuffer collects a process's output (or a logger's) for a test to
// read while it is still being written: Write and the readers may run at
// once.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Len is the number of bytes written so far: a mark for Since.
func (b *LogBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

// Since is what was written after mark (a Len).
func (b *LogBuffer) Since(mark int) string {
	s := b.String()
	if mark > len(s) {
		return ""
	}
	return s[mark:]
}

// Entries parses the JSON lines written after mark; other lines (a panic
// trace, console output) are skipped.
func (b *LogBuffer) Entries(mark int) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(b.Since(mark), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// WaitEntry waits, at most limit, for a JSON line written after mark that
// match accepts, and returns it; it fails the test with the log's tail
// when none comes.
func (b *LogBuffer) WaitEntry(tb testing.TB, mark int, limit time.Duration, match func(map[string]any) bool) map[string]any {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for {
		for _, m := range b.Entries(mark) {
			if match(m) {
				return m
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no matching log line within %v; log tail:\n%s", limit, Tail(b.String(), 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Msg matches a log entry by its message.
func Msg(msg string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["msg"] == msg }
}

// Tail is the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// MsgKey is how a JSON log line written by zap starts its message field:
// a cheap filter before parsing a line.
func MsgKey(msg string) string { return `"msg":"` + msg + `"` }
