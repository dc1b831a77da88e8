//go:build linux

package soak

import (
	"path/filepath"
	"strings"
	"testing"
)

// The soak tests' verdicts on the daemon's output rest on soakSink; this
// feeds it output of each kind, split at awkward places as a pipe may
// deliver it, and checks what it concluded. No root needed.
func TestSoakSinkJudges(t *testing.T) {
	race := strings.Join([]string{
		"==================",
		"WARNING: DATA RACE",
		"Write at 0x00c000123456 by goroutine 42:",
		"  github.com/ifsocks/ifsocks/socks.(*Server).cutFlows()",
		"Previous read at 0x00c000123456 by goroutine 17:",
		"  github.com/ifsocks/ifsocks/relay.(*flow).half()",
		"==================",
	}, "\n") + "\n"
	reloadOK := `{"level":"info","msg":"configuration reloaded","users":3}` + "\n"
	reloadBad := `{"level":"error","msg":"reload failed; the running configuration is unchanged","error":"x: unknown key server.k"}` + "\n"
	iface := `{"level":"info","msg":"egress interface state changed","interface":"wan2","from":"up","to":"down"}` + "\n"
	cut := `{"level":"warn","msg":"closed the flows of a lost egress interface","interface":"wan2","flows":7}` + "\n"
	flow := `{"level":"info","msg":"flow","user":"bob","outcome":"ok"}` + "\n"
	dump := "SIGQUIT: quit\nPC=0x0 m=0 sigcode=0\n\ngoroutine 1 [chan receive]:\nmain.main()\n\t/x/main.go:1\n\n" +
		"goroutine 7 [IO wait, 3 minutes]:\ninternal/poll.runtime_pollWait(0x0)\n\ngoroutine 8 [IO wait]:\ninternal/poll.runtime_pollWait(0x0)\n"

	cases := []struct {
		name  string
		input string
		dump  bool // SIGQUIT sent before the input
		check func(t *testing.T, st soakSinkState, s *soakSink)
	}{
		{"clean", flow + reloadOK + flow, false, func(t *testing.T, st soakSinkState, s *soakSink) {
			if st.races != 0 || len(st.panics) != 0 || st.passwordLines != 0 || st.lines != 3 {
				t.Errorf("state %+v, want 3 lines and nothing found", st)
			}
		}},
		{"race", flow + race + flow + race, false, func(t *testing.T, st soakSinkState, s *soakSink) {
			if st.races != 2 {
				t.Errorf("races %d, want 2", st.races)
			}
			if got := strings.Join(st.raceText, "\n") + "\n"; got != race {
				t.Errorf("first report kept as\n%s\nwant\n%s", got, race)
			}
		}},
		{"panic", flow + "panic: runtime error: index out of range\n\ngoroutine 9 [running]:\n", false, func(t *testing.T, st soakSinkState, s *soakSink) {
			if len(st.panics) != 1 || !strings.HasPrefix(st.panics[0], "panic: runtime error") {
				t.Errorf("panics %q, want the panic line", st.panics)
			}
		}},
		{"fatal error", "fatal error: concurrent map writes\n", false, func(t *testing.T, st soakSinkState, s *soakSink) {
			if len(st.panics) != 1 {
				t.Errorf("panics %q, want the fatal error line", st.panics)
			}
		}},
		{"password", `{"level":"warn","msg":"auth","pass":"` + soakBob.Password + `"}` + "\n" + flow, false, func(t *testing.T, st soakSinkState, s *soakSink) {
			if st.passwordLines != 1 {
				t.Errorf("password lines %d, want 1", st.passwordLines)
			}
		}},
		{"reloads", reloadOK + reloadBad + reloadBad, false, func(t *testing.T, st soakSinkState, s *soakSink) {
			if st.reloadOK != 1 || st.reloadFailed != 2 || st.lastReload["level"] != "error" {
				t.Errorf("reloads ok %d failed %d last %v, want 1, 2 and the failure", st.reloadOK, st.reloadFailed, st.lastReload)
			}
		}},
		{"interface events", iface + cut + flow, false, func(t *testing.T, st soakSinkState, s *soakSink) {
			evs, n := s.ifaceEventsSince(0, "wan2")
			cuts, m := s.cutsSince(0)
			if len(evs) != 1 || evs[0].to != "down" || n != 1 || len(cuts) != 1 || cuts[0]["flows"] != float64(7) || m != 1 {
				t.Errorf("events %v (%d), cuts %v (%d); want one change to down and one cut of 7 flows", evs, n, cuts, m)
			}
		}},
		{"goroutine dump", dump, true, func(t *testing.T, st soakSinkState, s *soakSink) {
			sum := s.dumpSummary()
			if !strings.Contains(sum, "     2  IO wait | internal/poll.runtime_pollWait") || !strings.Contains(sum, "     1  chan receive | main.main") {
				t.Errorf("dump summary:\n%s\nwant 2 in IO wait at runtime_pollWait and 1 in chan receive at main.main", sum)
			}
			if len(st.panics) != 0 {
				t.Errorf("a goroutine dump counted as panics: %q", st.panics)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := newSoakSink(filepath.Join(t.TempDir(), "log"), soakPasswords)
			if err != nil {
				t.Fatal(err)
			}
			if tc.dump {
				s.startDump()
			}
			// Pieces of 7 bytes: lines arrive split.
			for in := tc.input; in != ""; {
				k := min(7, len(in))
				if _, err := s.Write([]byte(in[:k])); err != nil {
					t.Fatal(err)
				}
				in = in[k:]
			}
			st := s.close()
			tc.check(t, st, s)
		})
	}
}
