package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestCheckUser: -check contacts the auth backend (a real HTTP hook here)
// and, with -check-user, reports what a login would get.
func TestCheckUser(t *testing.T) {
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct{ User, Password, Protocol string }
		json.NewDecoder(r.Body).Decode(&req)
		switch {
		case req.Password != "pw-"+req.User:
			fmt.Fprint(w, `{"allow": false}`)
		case req.User == "lou":
			fmt.Fprint(w, `{"allow": true, "egress": {"interface": "lo", "rate_limit": "1MiB"}}`)
		case req.User == "ghost":
			fmt.Fprint(w, `{"allow": true, "egress": {"interface": "nosuch9"}}`)
		}
	}))
	defer hook.Close()
	cfg := writeConfig(t, fmt.Sprintf("[server]\nlisten = [\"127.0.0.1:1080\"]\n[auth]\nbackend = \"http\"\n[auth.http]\nurl = %q\n", hook.URL+"/auth"))
	down := writeConfig(t, "[server]\nlisten = [\"127.0.0.1:1080\"]\n[auth]\nbackend = \"http\"\n[auth.http]\nurl = \"http://127.0.0.1:1/auth\"\n")
	file := writeConfig(t, "[server]\nlisten = [\"127.0.0.1:1080\"]\n")
	tests := []struct {
		name, stdin string
		args        []string
		ok          bool
		want        string
	}{
		{"reachable", "", []string{"-config", cfg, "-check"}, true, "auth backend http at " + hook.URL + "/auth: connects"},
		{"accepted", "pw-lou\n", []string{"-config", cfg, "-check", "-check-user", "lou"}, true, `user "lou": accepted; egress: interface=lo rate_limit=1048576`},
		{"refused", "wrong\n", []string{"-config", cfg, "-check", "-check-user", "lou"}, false, `user "lou": refused by the backend`},
		{"interface missing here", "pw-ghost\n", []string{"-config", cfg, "-check", "-check-user", "ghost"}, false, `egress.interface: "nosuch9": no such interface on this host`},
		{"hook down", "", []string{"-config", down, "-check"}, false, "not reachable"},
		{"file backend", "pw\n", []string{"-config", file, "-check", "-check-user", "lou"}, false, ""},
		{"without -check", "pw\n", []string{"-config", cfg, "-check-user", "lou"}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := runCmd(t, tt.stdin, tt.args...)
			if (err == nil) != tt.ok {
				t.Errorf("run %q: error %v, want ok=%v\n%s", tt.args, err, tt.ok, out)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("output lacks %q:\n%s", tt.want, out)
			}
			if strings.Contains(out, "pw-lou") {
				t.Error("the password is in the report")
			}
		})
	}
}
