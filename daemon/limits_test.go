package daemon

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/socks"
)

// TestSettingsLimits: the abuse limits of the file reach the server's
// settings, defaults included.
func TestSettingsLimits(t *testing.T) {
	cfg := parseConfig(t, fmt.Sprintf(`
[server]
max_handshakes_per_ip = 8
auth_fail_limit = 5
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
		AuthFail:           socks.AuthFailLimit{Max: 5, Window: 30 * time.Second, Cooldown: 10 * time.Minute},
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
		AuthFail: socks.AuthFailLimit{Max: config.DefaultAuthFailLimit,
			Window: config.DefaultAuthFailWindow, Cooldown: config.DefaultAuthFailCooldown},
		MaxConnections: config.DefaultMaxConnections,
	}
	if def.Limits != wantDefault {
		t.Errorf("default Limits = %+v, want %+v", def.Limits, wantDefault)
	}
}
