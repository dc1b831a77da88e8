package main

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/ifsocks/ifsocks/config"
)

func readRepo(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile("../../" + name)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestPackagedConfig: the installed configuration loads with the daemon's
// strict rules, has no users and listens on loopback only, and keeps
// every comment of the example.
func TestPackagedConfig(t *testing.T) {
	example := readRepo(t, "config.toml.example")
	out, err := packagedConfig(example)
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse(out, "config.toml")
	if err != nil {
		t.Fatalf("packaged config does not load: %v\n%s", err, out)
	}
	if len(c.Users) != 0 || len(c.Listeners) != 0 {
		t.Errorf("packaged config has %d users and %d listeners, want none", len(c.Users), len(c.Listeners))
	}
	if want := []string{"127.0.0.1:1080"}; !reflect.DeepEqual(c.Server.Listen, want) {
		t.Errorf("server.listen = %v, want %v", c.Server.Listen, want)
	}
	for line := range strings.Lines(string(example)) {
		if strings.HasPrefix(line, "#") && !strings.Contains(string(out), line) {
			t.Errorf("comment lost: %q", line)
		}
	}
}

func TestPackagedConfigErrors(t *testing.T) {
	for _, tt := range []struct{ name, in, want string }{
		{"no listen", "[server]\n[[users]]\nname = \"a\"\n", "found 0"},
		{"two listen", "[server]\nlisten = [\"a\"]\nlisten = [\"b\"]\n[[users]]\n", "found 2"},
		{"no users", "[server]\nlisten = [\"a\"]\n", "no [[users]]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := packagedConfig([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one saying %q", err, tt.want)
			}
		})
	}
}

// TestManPage: every reference section of the README, and the usage of
// main.go, are in the page; a README without a required section fails.
func TestManPage(t *testing.T) {
	readme, mainGo := readRepo(t, "README.md"), readRepo(t, "main.go")
	page, err := manPage(readme, mainGo, "1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	roff := string(page)
	for _, want := range []string{`.TH IFSOCKS 8 "" "ifsocks 1.2.3"`, ".SH NAME", ".SH SYNOPSIS", "ifsocks hash-password", ".SH FILES", "/etc/ifsocks/config.toml"} {
		if !strings.Contains(roff, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	_, sections, err := splitReadme(string(readme))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range sections {
		sh := ".SH " + strings.ToUpper(s.title) + "\n"
		if got := strings.Contains(roff, sh); got == manSkip[s.title] {
			t.Errorf("section %q in page: %v, want %v", s.title, got, !manSkip[s.title])
		}
		if !manSkip[s.title] {
			n++
		}
	}
	if n < len(manRequired) {
		t.Errorf("%d reference sections, want at least %d", n, len(manRequired))
	}
	// The metric names of the README's table reach the page (a table
	// the renderer dropped would lose them).
	if !strings.Contains(roff, "ifsocks_flows_total") || !strings.Contains(roff, "ifsocks_interface_up") {
		t.Error("page lacks the metrics table")
	}

	broken := strings.Replace(string(readme), "## Operations", "## Running it", 1)
	if _, err := manPage([]byte(broken), mainGo, "1"); err == nil || !strings.Contains(err.Error(), "Operations") {
		t.Errorf("README without Operations: error %v", err)
	}
	if _, err := manPage(readme, []byte("package main\n"), "1"); err == nil {
		t.Error("main.go without usage: no error")
	}
}
