//go:build linux

package soak

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// soakSink receives the soak daemon's stdout and stderr (one pipe), writes
// them to a file and keeps, instead of the whole text, what the tests
// judge: reload outcomes, interface events, data race reports, panics,
// lines with a password, the last lines, and a SIGQUIT goroutine dump.
type soakSink struct {
	path      string
	passwords [][]byte

	mu      sync.Mutex
	f       *os.File
	partial []byte
	ring    []string // last soakRingLines lines
	next    int
	st      soakSinkState
	dump    []string
}

const soakRingLines = 200

type soakSinkState struct {
	lines                  int64
	reloadOK, reloadFailed int
	lastReload             map[string]any
	races                  int
	raceText               []string
	inRace                 bool
	panics                 []string
	passwordLines          int
	ifaceEvents            []soakIfaceEvent
	cuts                   []map[string]any
	dumping, dumped        bool
}

// soakIfaceEvent is an "egress interface state changed" line, stamped
// with the time it reached the test.
type soakIfaceEvent struct {
	at        time.Time
	iface, to string
}

func newSoakSink(path string, passwords []string) (*soakSink, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	s := &soakSink{path: path, f: f, ring: make([]string, 0, soakRingLines)}
	for _, p := range passwords {
		s.passwords = append(s.passwords, []byte(p))
	}
	return s, nil
}

func (s *soakSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f != nil {
		_, _ = s.f.Write(p)
	}
	s.partial = append(s.partial, p...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		s.line(s.partial[:i])
		s.partial = s.partial[i+1:]
	}
	// Keep the buffer from pinning a large backing array.
	if len(s.partial) == 0 && cap(s.partial) > 64<<10 {
		s.partial = nil
	}
	return len(p), nil
}

var (
	keyReloaded     = []byte(nstest.MsgKey(msgReloaded))
	keyReloadFailed = []byte(nstest.MsgKey(msgReloadFailed))
	keyIfaceState   = []byte(nstest.MsgKey("egress interface state changed"))
	keyCut          = []byte(nstest.MsgKey("closed the flows of a lost egress interface"))
	raceBanner      = []byte("WARNING: DATA RACE")
)

// line judges one line; s.mu is held.
func (s *soakSink) line(b []byte) {
	st := &s.st
	st.lines++
	text := string(b)
	if len(s.ring) < soakRingLines {
		s.ring = append(s.ring, text)
	} else {
		s.ring[s.next] = text
		s.next = (s.next + 1) % soakRingLines
	}
	if st.dumping {
		s.dump = append(s.dump, text)
		return
	}
	for _, p := range s.passwords {
		if bytes.Contains(b, p) {
			st.passwordLines++
			break
		}
	}
	if bytes.Contains(b, raceBanner) {
		st.races++
		if st.races == 1 {
			st.inRace = true
			st.raceText = append(st.raceText, "==================")
		}
	}
	if st.inRace {
		if len(st.raceText) < 150 {
			st.raceText = append(st.raceText, text)
		}
		if text == "==================" && len(st.raceText) > 2 {
			st.inRace = false
		}
		return
	}
	if len(b) == 0 || b[0] != '{' {
		if strings.HasPrefix(text, "panic: ") || strings.HasPrefix(text, "fatal error: ") {
			st.panics = append(st.panics, text)
		}
		return
	}
	var m map[string]any
	switch {
	case bytes.Contains(b, keyReloaded):
		if json.Unmarshal(b, &m) == nil {
			st.reloadOK++
			st.lastReload = m
		}
	case bytes.Contains(b, keyReloadFailed):
		if json.Unmarshal(b, &m) == nil {
			st.reloadFailed++
			st.lastReload = m
		}
	case bytes.Contains(b, keyIfaceState):
		if json.Unmarshal(b, &m) == nil {
			iface, _ := m["interface"].(string)
			to, _ := m["to"].(string)
			st.ifaceEvents = append(st.ifaceEvents, soakIfaceEvent{at: time.Now(), iface: iface, to: to})
		}
	case bytes.Contains(b, keyCut):
		if json.Unmarshal(b, &m) == nil {
			st.cuts = append(st.cuts, m)
		}
	}
}

func (s *soakSink) reloadCounts() (ok, failed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.reloadOK, s.st.reloadFailed
}

func (s *soakSink) lastReload() map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.lastReload
}

// ifaceEventsSince returns the state changes of iface after index i of
// the event list, and the list's length.
func (s *soakSink) ifaceEventsSince(i int, iface string) ([]soakIfaceEvent, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []soakIfaceEvent
	for _, e := range s.st.ifaceEvents[min(i, len(s.st.ifaceEvents)):] {
		if e.iface == iface {
			out = append(out, e)
		}
	}
	return out, len(s.st.ifaceEvents)
}

// marks returns the number of interface events and of cut lines so far.
func (s *soakSink) marks() (ifaceEvents, cuts int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.st.ifaceEvents), len(s.st.cuts)
}

func (s *soakSink) cutsSince(i int) ([]map[string]any, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.st.cuts[min(i, len(s.st.cuts)):]), len(s.st.cuts)
}

func (s *soakSink) tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines := append(slices.Clone(s.ring[s.next:]), s.ring[:s.next]...)
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (s *soakSink) startDump() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.dumping, s.st.dumped = true, true
}

// dumpSummary counts the goroutines of a SIGQUIT dump by state and first
// frame, most frequent first.
func (s *soakSink) dumpSummary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	counts := map[string]int{}
	for i, line := range s.dump {
		if strings.HasPrefix(line, "goroutine ") && strings.HasSuffix(line, ":") && i+1 < len(s.dump) {
			_, state, _ := strings.Cut(line, "[")
			state, _, _ = strings.Cut(state, "]")
			state, _, _ = strings.Cut(state, ",")
			fn, _, _ := strings.Cut(s.dump[i+1], "(")
			counts[state+" | "+fn]++
		}
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return counts[b] - counts[a] })
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%6d  %s\n", counts[k], k)
	}
	return b.String()
}

// close flushes the file and returns the final state.
func (s *soakSink) close() soakSinkState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.partial) > 0 {
		s.line(s.partial)
		s.partial = nil
	}
	if s.f != nil {
		_ = s.f.Close()
		s.f = nil
	}
	return s.st
}
