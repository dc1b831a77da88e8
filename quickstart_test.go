package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// quickStart returns the three command lines of the README's quick start:
// the daemon, the upstream and the client.
func quickStart(tb testing.TB) (daemon, upstream, client string) {
	tb.Helper()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		tb.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(readme), "\n## Quick start\n")
	if !ok {
		tb.Fatal("README.md has no Quick start section")
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	_, block, _ := strings.Cut(sec, "```sh\n")
	block, _, _ = strings.Cut(block, "```")
	lines := strings.Split(strings.TrimSpace(block), "\n")
	if len(lines) != 3 {
		tb.Fatalf("quick start has %d command lines, want 3: %q", len(lines), lines)
	}
	return lines[0], lines[1], lines[2]
}

func freePort(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// startCmd runs argv until the test ends.
func startCmd(tb testing.TB, dir string, out *nstest.LogBuffer, argv ...string) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cancel(); cmd.Wait() })
}

func waitListen(tb testing.TB, addr string, out *nstest.LogBuffer) {
	tb.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
	}
	tb.Fatalf("nothing listens on %s after 60 s; output:\n%s", addr, out)
}

// TestQuickStart runs the README's quick start as written, on loopback,
// with the two ports replaced by free ones: the daemon (built here instead
// of go run) with examples/try-local.toml, python's HTTP server and the
// curl line, which must print the served directory. Then the same curl
// through a daemon with the built-in default configuration must fail, with
// an info line naming the setting that refused it.
func TestQuickStart(t *testing.T) {
	for _, tool := range []string{"python3", "curl", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not found", tool)
			}
			t.Skipf("%s not found", tool)
		}
	}
	daemonLine, upLine, curlLine := quickStart(t)
	const cfgArg = "-config examples/try-local.toml"
	if daemonLine != "go run . "+cfgArg {
		t.Fatalf("daemon line %q", daemonLine)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "ifsocks")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	proxyPort, upPort := freePort(t), freePort(t)
	ports := strings.NewReplacer("127.0.0.1:1080", "127.0.0.1:"+proxyPort, "127.0.0.1:8080", "127.0.0.1:"+upPort, " 8080", " "+upPort)
	cfg, err := os.ReadFile("examples/try-local.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "try-local.toml")
	if err := os.WriteFile(cfgPath, []byte(ports.Replace(string(cfg))), 0o600); err != nil {
		t.Fatal(err)
	}

	www := filepath.Join(dir, "www")
	os.Mkdir(www, 0o755)
	os.WriteFile(filepath.Join(www, "quick-start-marker.txt"), []byte("hello"), 0o644)
	var upOut, dOut nstest.LogBuffer
	startCmd(t, www, &upOut, strings.Fields(ports.Replace(upLine))...)
	startCmd(t, "", &dOut, bin, "-config", cfgPath)
	waitListen(t, "127.0.0.1:"+upPort, &upOut)
	waitListen(t, "127.0.0.1:"+proxyPort, &dOut)

	curl := append(strings.Fields(ports.Replace(curlLine)), "--silent", "--show-error", "--max-time", "20")
	out, err := exec.Command(curl[0], curl[1:]...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "quick-start-marker.txt") {
		t.Fatalf("%q: %v\n%s\ndaemon:\n%s", curl, err, out, dOut.String())
	}

	// The built-in default (no -config, no /etc/ifsocks/config.toml)
	// would listen on 127.0.0.1:1080; a file with only that port changed
	// stands for it here, since the port may be taken.
	defPath := filepath.Join(dir, "default.toml")
	defPort := freePort(t)
	os.WriteFile(defPath, []byte("[server]\nlisten = [\"127.0.0.1:"+defPort+"\"]\n"), 0o600)
	var defOut nstest.LogBuffer
	startCmd(t, "", &defOut, bin, "-config", defPath)
	waitListen(t, "127.0.0.1:"+defPort, &defOut)
	curl = append(strings.Fields(strings.ReplaceAll(curlLine, "try:try-password@127.0.0.1:1080", "127.0.0.1:"+defPort)), "--silent", "--show-error", "--max-time", "20")
	curl = strings.Fields(strings.ReplaceAll(strings.Join(curl, " "), "127.0.0.1:8080", "127.0.0.1:"+upPort))
	out, err = exec.Command(curl[0], curl[1:]...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "(97)") {
		t.Errorf("default configuration: %q: %v, want curl's (97)\n%s", curl, err, out)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(defOut.String(), `"outcome":"denied"`) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	var line string
	for l := range strings.Lines(defOut.String()) {
		if strings.Contains(l, `"outcome":"denied"`) {
			line = l
		}
	}
	if !strings.Contains(line, `"level":"info"`) || !strings.Contains(line, "server.deny") {
		t.Errorf("refusal line %q: want level info naming server.deny; log:\n%s", line, defOut.String())
	}
}
