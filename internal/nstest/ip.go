package nstest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// CleanEnv is the environment of every command the harness starts: no
// proxy variables (curl would honour them), no shims on PATH, so the
// system's tools run.
var CleanEnv = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=/root"}

// CommandTimeout bounds each ip and sysctl command.
const CommandTimeout = 10 * time.Second

// RequireRoot skips the test without root, unless CI is set: there a skip
// would hide a misconfigured runner, so it fails instead. It also needs
// ip(8) from iproute2.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	fail := tb.Skipf
	if os.Getenv("CI") != "" {
		fail = tb.Fatalf
	}
	if os.Geteuid() != 0 {
		fail("network namespace tests need root (with CI set this is a failure, not a skip)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		fail("ip (iproute2) not found: %v", err)
	}
}

// Run runs a command with CleanEnv and ctx's deadline and returns its
// stdout and stderr; the error names the command and carries stderr.
func Run(ctx context.Context, stdin []byte, name string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = CleanEnv
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), errb.String(), fmt.Errorf("%s %s: %w (stderr: %s)", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), errb.String(), nil
}

// IPErr runs `ip ARGS...` bounded by CommandTimeout and returns its
// output; for setup outside a test (TestMain).
func IPErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	out, _, err := Run(ctx, nil, "ip", args...)
	return out, err
}

// IP runs `ip ARGS...` and fails the test on error.
func IP(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := IPErr(args...)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}
