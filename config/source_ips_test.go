package config_test

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/ifsocks/ifsocks/config"
)

// TestSourceIPsValid: pools of addresses and prefixes, both families, in
// any order (stored sorted), with each rotation and its defaults.
func TestSourceIPsValid(t *testing.T) {
	user := userTOML("u", "pw")
	pool := "source_ips = [\"2600:1f18:abcd:1200::/80\", \"172.31.0.32/28\", \"172.31.0.15\", \"172.31.0.14\"]\n"
	sorted := []netip.Prefix{
		netip.MustParsePrefix("172.31.0.14/32"), netip.MustParsePrefix("172.31.0.15/32"),
		netip.MustParsePrefix("172.31.0.32/28"), netip.MustParsePrefix("2600:1f18:abcd:1200::/80"),
	}
	tests := []struct {
		name     string
		text     string
		want     config.Egress
		listener bool
	}{
		{name: "flow by default", text: user + pool, want: config.Egress{SourceIPs: sorted, Rotation: config.RotationFlow}},
		{name: "user on an interface", text: user + pool + "source_rotation = \"user\"\ninterface = \"eth1\"\n",
			want: config.Egress{Interface: "eth1", SourceIPs: sorted, Rotation: config.RotationUser}},
		{name: "session, default separator", text: user + pool + "source_rotation = \"session\"\n",
			want: config.Egress{SourceIPs: sorted, Rotation: config.RotationSession, SessionSeparator: config.DefaultSessionSeparator}},
		{name: "session, own separator", text: user + pool + "source_rotation = \"session\"\nsession_separator = \"_s_\"\n",
			want: config.Egress{SourceIPs: sorted, Rotation: config.RotationSession, SessionSeparator: "_s_"}},
		{name: "listener with session", listener: true,
			text: user + "[[listeners]]\naddress = \"127.0.0.1:1081\"\nsource_ips = [\"2001:db8::/64\"]\nsource_rotation = \"session\"\ninterface = \"eth2\"\n",
			want: config.Egress{Interface: "eth2", SourceIPs: []netip.Prefix{netip.MustParsePrefix("2001:db8::/64")}, Rotation: config.RotationSession, SessionSeparator: "-session-"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(t, tt.text)
			if err != nil {
				t.Fatal(err)
			}
			got := c.Users[0].Egress
			if tt.listener {
				got = c.Listeners[0].Egress
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("egress = %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestSourceIPsErrors: each error names the key path and the bad value.
func TestSourceIPsErrors(t *testing.T) {
	user := userTOML("u", "pw")
	tests := []struct {
		name, text, key, want string
	}{
		{"empty", user + "source_ips = []\n", "users[0].source_ips", "[]"},
		{"not an address", user + "source_ips = [\"10.0.0.1\", \"nope\"]\n", "users[0].source_ips[1]", "nope"},
		{"host bits", user + "source_ips = [\"10.0.0.1/28\"]\n", "users[0].source_ips[0]", "10.0.0.1/28"},
		{"loopback", user + "source_ips = [\"127.0.0.0/8\"]\n", "users[0].source_ips[0]", "127.0.0.0/8"},
		{"unspecified", user + "source_ips = [\"::/0\"]\n", "users[0].source_ips[0]", "::/0"},
		{"link-local", user + "source_ips = [\"fe80::/64\"]\n", "users[0].source_ips[0]", "fe80::/64"},
		{"mapped", user + "source_ips = [\"::ffff:10.0.0.1\"]\n", "users[0].source_ips[0]", "::ffff:10.0.0.1"},
		{"overlap", user + "source_ips = [\"10.0.0.0/28\", \"10.0.0.5\"]\n", "users[0].source_ips[1]", "10.0.0.5"},
		{"with source_ip", user + "source_ip = \"10.0.0.1\"\nsource_ips = [\"10.0.0.2\"]\n", "users[0].source_ips", "10.0.0.2"},
		{"with interfaces", user + "interfaces = [\"a\", \"b\"]\nsource_ips = [\"10.0.0.2\"]\n", "users[0].source_ips", "10.0.0.2"},
		{"with ingress", user + "interface = \"ingress\"\nsource_ips = [\"10.0.0.2\"]\n", "users[0].source_ips", "10.0.0.2"},
		{"unknown rotation", user + "source_ips = [\"10.0.0.2\"]\nsource_rotation = \"request\"\n", "users[0].source_rotation", "request"},
		{"rotation without pool", user + "source_rotation = \"user\"\n", "users[0].source_rotation", "user"},
		{"separator without session", user + "source_ips = [\"10.0.0.2\"]\nsession_separator = \"-s-\"\n", "users[0].session_separator", "-s-"},
		{"empty separator", user + "source_ips = [\"10.0.0.2\"]\nsource_rotation = \"session\"\nsession_separator = \"\"\n", "users[0].session_separator", ""},
		{"separator with space", user + "source_ips = [\"10.0.0.2\"]\nsource_rotation = \"session\"\nsession_separator = \" s \"\n", "users[0].session_separator", " s "},
		{"session on a no-auth listener", "[[listeners]]\naddress = \"127.0.0.1:1\"\nauth = \"none\"\nsource_ips = [\"10.0.0.2\"]\nsource_rotation = \"session\"\n", "listeners[0].source_rotation", "session"},
		{"user rotation on a no-auth listener", "[[listeners]]\naddress = \"127.0.0.1:1\"\nauth = \"none\"\nsource_ips = [\"10.0.0.2\"]\nsource_rotation = \"user\"\n", "listeners[0].source_rotation", "user"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.text)
			if err == nil {
				t.Fatal("no error")
			}
			var found bool
			for _, e := range unwrapAll(err) {
				if ce, ok := e.(*config.Error); ok && ce.Key == tt.key {
					found = true
					if ce.Value != tt.want {
						t.Errorf("value = %q, want %q", ce.Value, tt.want)
					}
				}
			}
			if !found {
				t.Errorf("no error for key %s in: %v", tt.key, err)
			}
		})
	}
}
