package daemon

import (
	"fmt"
	"net"
	"reflect"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/socks"
	"go.uber.org/zap/zapcore"
)

// TestSettingsLimits: the abuse limits of the file reach the server's
// settings, defaults included.
func TestSettingsLimits(t *testing.T) {
	cfg := parseConfig(t, fmt.Sprintf(`
[server]
max_handshakes_per_ip = 8
max_handshakes = 300
auth_fail_limit = 5
auth_fail_limit_ip = 12
auth_fail_window = "30s"
auth_fail_cooldown = "10m"
max_connections = 5000

[[users]]
name = "alice"
password_hash = %q
max_connections = 10
rate_limit = "10MiB"

[[users]]
name = "bob"
password = "bob-pw"
rate_limit = 100000
rate_burst = "1MB"
`, bcryptHash(t, "alice-pw")))
	st, err := Settings(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wantLimits := socks.Limits{
		MaxHandshakesPerIP: 8,
		MaxHandshakes:      300,
		AuthFail:           socks.AuthFailLimit{Max: 5, MaxClient: 12, Window: 30 * time.Second, Cooldown: 10 * time.Minute},
		MaxConnections:     5000,
	}
	if st.Limits != wantLimits {
		t.Errorf("Limits = %+v, want %+v", st.Limits, wantLimits)
	}
	wantUsers := map[string]socks.User{
		"alice": {MaxConnections: 10, Rate: socks.Rate{BytesPerSec: 10 << 20, Burst: 1 << 20}},
		"bob":   {Rate: socks.Rate{BytesPerSec: 100000, Burst: 1e6}},
	}
	if !reflect.DeepEqual(st.Users, wantUsers) {
		t.Errorf("Users = %+v, want %+v", st.Users, wantUsers)
	}

	def, err := Settings(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	wantDefault := socks.Limits{
		MaxHandshakesPerIP: config.DefaultMaxHandshakesPerIP,
		MaxHandshakes:      0, // unset: the daemon derives it from the host
		AuthFail: socks.AuthFailLimit{Max: config.DefaultAuthFailLimit, MaxClient: 5 * config.DefaultAuthFailLimit,
			Window: config.DefaultAuthFailWindow, Cooldown: config.DefaultAuthFailCooldown},
		MaxConnections: config.DefaultMaxConnections,
	}
	if def.Limits != wantDefault {
		t.Errorf("default Limits = %+v, want %+v", def.Limits, wantDefault)
	}
}

// TestReloadLiftsAuthBlocks: the start-up line names max_handshakes,
// derived from RLIMIT_NOFILE; a user blocked after auth_fail_limit failures
// is refused even with the right password until a reload (SIGHUP), which
// lifts the block and says so in its line; the start-up log warns about
// users whose bcrypt costs differ.
func TestReloadLiftsAuthBlocks(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	target := echoServer(t, "127.0.0.1:0")
	text := fmt.Sprintf(`[server]
listen = [%q]
deny = []
deny_own_addresses = false
auth_fail_limit = 2

[[users]]
name = "erin"
password_hash = %q

[[users]]
name = "frank"
password_hash = %q
`, addr, bcryptHashCost(t, "erin-pw", 4), bcryptHashCost(t, "frank-pw", 5))
	d := startFileDaemon(t, text)
	// Unset, max_handshakes is a quarter of RLIMIT_NOFILE.
	var nofile syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &nofile); err != nil {
		t.Fatal(err)
	}
	started := d.logs.FilterMessage("ifsocks started").All()
	if len(started) != 1 || started[0].ContextMap()["max_handshakes"] != int64(nofile.Cur/4) {
		t.Errorf("start lines %v, want max_handshakes %d (RLIMIT_NOFILE %d / 4)", started, nofile.Cur/4, nofile.Cur)
	}
	costs := d.logs.FilterMessageSnippet("bcrypt costs differ").All()
	if len(costs) != 1 || costs[0].Level != zapcore.WarnLevel || costs[0].ContextMap()["lowest_cost"] != int64(4) || costs[0].ContextMap()["highest_cost"] != int64(5) {
		t.Errorf("cost warnings %v, want one warning naming costs 4 and 5", costs)
	}

	for range 2 {
		if c, err := socksDial(t, addr, "erin", "wrong", target); err == nil {
			c.Close()
			t.Fatal("wrong password accepted")
		}
	}
	if c, err := socksDial(t, addr, "erin", "erin-pw", target); err == nil {
		c.Close()
		t.Fatal("blocked user accepted")
	}
	line := d.reloadWith(t, text)
	if line.Message != "configuration reloaded" || line.ContextMap()["auth_blocks_lifted"] != int64(1) {
		t.Fatalf("reload: %s %v, want auth_blocks_lifted 1", line.Message, line.ContextMap())
	}
	c, err := socksDial(t, addr, "erin", "erin-pw", target)
	if err != nil {
		t.Fatalf("after the reload: %v", err)
	}
	echo(t, c, "unblocked")
	c.Close()
}
