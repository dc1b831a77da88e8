//go:build linux

package soak

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Test 2: reloads under load.

// soakBroken is a configuration file that must not load. Each also
// changes bob's password and adds or removes carol, so that if any part
// of it took effect, bob's new tunnels and the carol probe would show it.
type soakBroken struct {
	name string
	want string // in the logged error
	text func(t *testing.T, carolIn bool) string
}

func soakBrokenUsers(carolIn bool) []nstest.User {
	users := []nstest.User{soakAlice, soakBobBroken}
	if !carolIn {
		users = append(users, soakCarol)
	}
	return users
}

var soakBrokenFiles = []soakBroken{
	{"unknown key", "unknown key server.bogus_soak_key", func(t *testing.T, carolIn bool) string {
		return soakConfig(t, "10s", "bogus_soak_key = 1\n", soakBrokenUsers(carolIn)...)
	}},
	{"bad duration", `server.handshake_timeout: "ten seconds"`, func(t *testing.T, carolIn bool) string {
		return soakConfig(t, "ten seconds", "", soakBrokenUsers(carolIn)...)
	}},
	{"bad interface name", `users[1].interface: "eth/1"`, func(t *testing.T, carolIn bool) string {
		users := soakBrokenUsers(carolIn)
		users[1].Interface = "eth/1"
		return soakConfig(t, "10s", "", users...)
	}},
	{"duplicate user", `users[2].name: "bob": duplicate of users[1]`, func(t *testing.T, carolIn bool) string {
		users := append(soakBrokenUsers(carolIn)[:2], soakBobBroken)
		return soakConfig(t, "10s", "", users...)
	}},
	{"TOML syntax", "toml: line", func(t *testing.T, carolIn bool) string {
		text := soakConfig(t, "10s", "", soakBrokenUsers(carolIn)...)
		cut := strings.Index(text, "10.231.")
		return text[:cut] + "\n" + text[cut:] // a newline inside a string
	}},
}

// TestSoakReload: the soak load runs while the daemon is reloaded, every
// other time with a broken file. Valid reloads add or remove carol (and
// change handshake_timeout); they take effect at once. Broken ones are
// logged at error level naming the key and change nothing. No tunnel
// fails, every tunnel verifies data after the last reload, and the
// daemon comes back to its baseline.
func TestSoakReload(t *testing.T) {
	r := newSoakRun(t)
	l := r.startLoad(t)
	smp := r.sample(t, l)
	start := time.Now()
	carolIn := false
	var valid, broken int
	var took []time.Duration
	var lastReload time.Time
	for i := range r.p.reloads {
		r.hold(t, r.p.reloadEvery)
		var ok bool
		var line map[string]any
		sent := time.Now()
		if i%2 == 0 {
			carolIn = !carolIn
			users, hs := []nstest.User{soakAlice, soakBob}, "10s"
			if carolIn {
				users, hs = append(users, soakCarol), "11s"
			}
			r.d.writeConfig(soakConfig(t, hs, "", users...))
			ok, line = r.d.reload(t, 15*time.Second)
			if !ok {
				t.Fatalf("reload %d (valid, carol %v): failed: %v", i, carolIn, line)
			}
			if got := line["users"]; got != float64(len(users)) {
				t.Errorf("reload %d: logged users %v, want %d", i, got, len(users))
			}
			valid++
		} else {
			b := soakBrokenFiles[(i/2)%len(soakBrokenFiles)]
			r.d.writeConfig(b.text(t, carolIn))
			ok, line = r.d.reload(t, 15*time.Second)
			msg, _ := line["error"].(string)
			if ok {
				t.Fatalf("reload %d of a broken file (%s) succeeded: %v", i, b.name, line)
			}
			if line["level"] != "error" || !strings.Contains(msg, b.want) {
				t.Errorf("reload %d (%s): level %v error %q, want level error and %q", i, b.name, line["level"], msg, b.want)
			}
			broken++
		}
		took = append(took, time.Since(sent))
		lastReload = time.Now()
		l.marks.Add(1)
		// The configuration in force is the last valid one.
		auth, rep, err := l.probe(soakCarol)
		if carolIn && (err != nil || auth != 0 || rep != 0) {
			t.Errorf("after reload %d: carol (configured) got auth %d reply %d, %v; want a working tunnel", i, auth, rep, err)
		} else if !carolIn && (err != nil || auth != 1) {
			t.Errorf("after reload %d: carol (not configured) got auth %d reply %d, %v; want auth status 1", i, auth, rep, err)
		}
		if auth, rep, err := l.probe(soakBob); err != nil || auth != 0 || rep != 0 {
			t.Errorf("after reload %d: bob with his password got auth %d reply %d, %v; want a working tunnel", i, auth, rep, err)
		}
	}
	// Every tunnel is still verifying: each has an exchange after the
	// last reload.
	l.waitAllVerified(t, lastReload, 4*r.p.interval+r.p.timeout)
	peak := smp.result(t, r.base, r.p.tunnels)
	l.finish(t, 2*r.p.timeout)
	elapsed := time.Since(start)
	r.drain(t)

	if evs := l.eventsCopy(); len(evs) > 0 {
		t.Errorf("load failures across the reloads: %s", l.summarizeEvents(evs, 10))
	}
	okN, badN := r.d.sink.reloadCounts()
	if okN != valid || badN != broken {
		t.Errorf("log: %d %q and %d %q lines, want %d and %d", okN, msgReloaded, badN, msgReloadFailed, valid, broken)
	}
	st := r.wantServerClean(t, false)
	pm := r.wantMetricsMatch(t, l, allUsers)
	nstest.WantMetric(t, pm, "ifsocks_config_reloads_total", map[string]string{"result": "success"}, float64(valid))
	nstest.WantMetric(t, pm, "ifsocks_config_reloads_total", map[string]string{"result": "failure"}, float64(broken))
	slices.Sort(took)
	if len(took) > 0 {
		t.Logf("%d reloads (%d valid, %d broken) one per %v; SIGHUP to outcome line: median %v, max %v",
			len(took), valid, broken, r.p.reloadEvery, took[len(took)/2].Round(time.Microsecond), took[len(took)-1].Round(time.Microsecond))
	}
	r.logBytes(t, l, st, elapsed)
	r.checkBaseline(t, peak)
}
