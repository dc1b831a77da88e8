package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/crypto/bcrypt"
)

func TestMain(m *testing.M) {
	// signal.NotifyContext in run starts the os/signal dispatcher, which
	// lives for the rest of the process by design.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("os/signal.signal_recv"),
		goleak.IgnoreTopFunction("os/signal.loop"))
}

// runCmd calls run with a time bound; run must never get as far as
// serving (every case here fails or exits before that).
func runCmd(tb testing.TB, stdin string, args ...string) (stdout, stderr string, err error) {
	tb.Helper()
	var out, errb bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- run(args, strings.NewReader(stdin), &out, &errb) }()
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		tb.Fatalf("run(%q) still running after 20s", args)
	}
	return out.String(), errb.String(), err
}

// TestVersion: -version prints the version set at build time, then what
// the build info holds (a test binary has no VCS stamp: "unknown").
func TestVersion(t *testing.T) {
	stdout, _, err := runCmd(t, "", "-version")
	if err != nil {
		t.Fatalf("run -version: %v", err)
	}
	for _, want := range []string{"ifsocks dev (module ", ", revision ", ", go1."} {
		if !strings.Contains(stdout, want) {
			t.Errorf("run -version printed %q, want it to contain %q", stdout, want)
		}
	}
	if strings.Count(stdout, "\n") != 1 {
		t.Errorf("run -version printed %q, want one line", stdout)
	}
}

// TestHelp: -h (and hash-password -h) is asked for, not a mistake: status
// 0, the usage on stdout, naming every subcommand and flag.
func TestHelp(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"-h"}, []string{"hash-password", "-config", "-check", "-version"}},
		{[]string{"--help"}, []string{"hash-password"}},
		{[]string{"hash-password", "-h"}, []string{"-cost"}},
	} {
		stdout, stderr, err := runCmd(t, "", tt.args...)
		if err != nil {
			t.Errorf("run %q = %v, want nil (exit 0)", tt.args, err)
		}
		for _, w := range tt.want {
			if !strings.Contains(stdout, w) {
				t.Errorf("run %q printed %q on stdout, want it to name %q", tt.args, stdout, w)
			}
		}
		if stderr != "" {
			t.Errorf("run %q printed %q on stderr", tt.args, stderr)
		}
	}
}

func TestHashPassword(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		stdin string
		want  string // the password the hash must verify
		cost  int
	}{
		{"newline", []string{"-cost", "4"}, "pw\n", "pw", 4},
		{"no newline", []string{"-cost", "4"}, "pw", "pw", 4},
		{"crlf", []string{"-cost", "4"}, "pw\r\n", "pw", 4},
		{"first line only", []string{"-cost", "4"}, "pw\nsecond line\n", "pw", 4},
		{"inner spaces kept", []string{"-cost", "4"}, " p w \n", " p w ", 4},
		{"cost 5", []string{"-cost=5"}, "pw\n", "pw", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, _, err := runCmd(t, tt.stdin, append([]string{"hash-password"}, tt.args...)...)
			if err != nil {
				t.Fatalf("hash-password: %v", err)
			}
			h, ok := strings.CutSuffix(stdout, "\n")
			if !ok || strings.Contains(h, "\n") {
				t.Fatalf("output %q, want one line", stdout)
			}
			if err := bcrypt.CompareHashAndPassword([]byte(h), []byte(tt.want)); err != nil {
				t.Errorf("hash %q does not verify %q: %v", h, tt.want, err)
			}
			if c, err := bcrypt.Cost([]byte(h)); err != nil || c != tt.cost {
				t.Errorf("cost %d (%v), want %d", c, err, tt.cost)
			}
		})
	}
}

func TestHashPasswordErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		stdin   string
		wantErr string // substring of the error
	}{
		{"empty stdin", []string{"-cost", "4"}, "", "empty password"},
		{"empty line", []string{"-cost", "4"}, "\n", "empty password"},
		{"unknown flag", []string{"-nope"}, "pw\n", "-nope"},
		{"cost not a number", []string{"-cost", "ten"}, "pw\n", "-cost"},
		{"cost too high", []string{"-cost", "32"}, "pw\n", "cost"},
		// The help text says 4-31; bcrypt itself silently replaces a
		// lower cost with its default (10).
		{"cost too low", []string{"-cost", "3"}, "pw\n", "cost"},
		// A password given as an argument must not be ignored while
		// stdin is hashed instead.
		{"extra argument", []string{"-cost", "4", "pw"}, "other\n", "pw"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, _, err := runCmd(t, tt.stdin, append([]string{"hash-password"}, tt.args...)...)
			if err == nil {
				t.Fatalf("hash-password %q succeeded (printed %q), want an error", tt.args, stdout)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q, want it to mention %q", err, tt.wantErr)
			}
			if stdout != "" {
				t.Errorf("printed %q on error", stdout)
			}
		})
	}
}

// writeConfig writes a config file for one test.
func writeConfig(tb testing.TB, text string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

func TestRunErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.toml")
	unknownKey := writeConfig(t, "[server]\nlisten = [\"127.0.0.1:1080\"]\nbogus_key = 1\n")
	badValue := writeConfig(t, "[log]\nlevel = \"loud\"\n")

	// A valid config whose listen address is taken: the daemon fails at
	// once instead of serving. The cheap user keeps the auth store from
	// making a default-cost dummy hash.
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	busyConfig := writeConfig(t, fmt.Sprintf("[server]\nlisten = [%q]\n[[users]]\nname = \"a\"\npassword_hash = %q\n",
		busy.Addr().String(), hash))

	tests := []struct {
		name    string
		args    []string
		wantErr []string // substrings of the error
		is      error
	}{
		{"unknown flag", []string{"-nope"}, []string{"-nope"}, nil},
		{"unknown subcommand", []string{"hash-pasword"}, []string{`"hash-pasword"`, "hash-password"}, nil},
		{"extra argument", []string{"extra"}, []string{`"extra"`}, nil},
		{"extra argument after version", []string{"-version", "extra"}, []string{`"extra"`}, nil},
		{"missing config", []string{"-config", missing}, []string{missing}, fs.ErrNotExist},
		{"unknown key", []string{"-config", unknownKey}, []string{unknownKey, "server.bogus_key"}, nil},
		{"bad value", []string{"-config", badValue}, []string{badValue, "log.level", "loud"}, nil},
		{"listen address in use", []string{"-config", busyConfig}, []string{busy.Addr().String()}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, _, err := runCmd(t, "", tt.args...)
			if err == nil {
				t.Fatalf("run %q = nil, want an error", tt.args)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q, want it to name %q", err, s)
				}
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v, want errors.Is %v", err, tt.is)
			}
			if stdout != "" {
				t.Errorf("printed %q on stdout", stdout)
			}
		})
	}
}
