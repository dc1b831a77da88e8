package config_test

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/ifsocks/ifsocks/config"
)

// TestEgressValid covers each way to say where flows leave, for users and
// listeners.
func TestEgressValid(t *testing.T) {
	user := userTOML("u", "pw")
	tests := []struct {
		name string
		text string
		want config.Egress
		// listener: check Listeners[0] instead of Users[0]
		listener bool
	}{
		{name: "one interface", text: user + "interface = \"eth1\"\n", want: config.Egress{Interface: "eth1"}},
		{name: "ingress", text: user + "interface = \"ingress\"\n", want: config.Egress{Interface: config.Ingress}},
		{
			name: "several, failover by default",
			text: user + "interfaces = [\"eth1\", \"eth2\"]\n",
			want: config.Egress{Interfaces: []string{"eth1", "eth2"}, Strategy: config.StrategyFailover},
		},
		{
			name: "round-robin",
			text: user + "interfaces = [\"eth1\", \"eth2\"]\nstrategy = \"round-robin\"\n",
			want: config.Egress{Interfaces: []string{"eth1", "eth2"}, Strategy: config.StrategyRoundRobin},
		},
		{
			name: "hash",
			text: user + "interfaces = [\"a\", \"b\", \"c\"]\nstrategy = \"hash\"\n",
			want: config.Egress{Interfaces: []string{"a", "b", "c"}, Strategy: config.StrategyHash},
		},
		{name: "source IPv4", text: user + "source_ip = \"172.31.0.14\"\n", want: config.Egress{SourceIP: netip.MustParseAddr("172.31.0.14")}},
		{name: "source IPv6", text: user + "source_ip = \"2001:db8::5\"\n", want: config.Egress{SourceIP: netip.MustParseAddr("2001:db8::5")}},
		{name: "mark with interface", text: user + "interface = \"eth1\"\nmark = 100\n", want: config.Egress{Interface: "eth1", Mark: 100}},
		{name: "largest mark", text: user + "mark = 4294967295\n", want: config.Egress{Mark: 4294967295}},
		{
			name:     "no-auth listener with clients and egress",
			text:     "[[listeners]]\naddress = \"10.0.0.5:1081\"\nauth = \"none\"\nallow_clients = [\"10.0.0.0/8\"]\ninterface = \"eth2\"\n",
			want:     config.Egress{Interface: "eth2"},
			listener: true,
		},
		{
			name:     "password listener with ingress",
			text:     user + "[[listeners]]\naddress = \"10.0.0.5:1082\"\ninterface = \"ingress\"\n",
			want:     config.Egress{Interface: config.Ingress},
			listener: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(t, tt.text)
			if err != nil {
				t.Fatal(err)
			}
			var got config.Egress
			if tt.listener {
				got = c.Listeners[0].Egress
			} else {
				got = c.Users[0].Egress
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("egress = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestListenersValid(t *testing.T) {
	c, err := parse(t, userTOML("u", "pw")+
		"[[listeners]]\naddress = \"10.0.0.5:1081\"\nauth = \"none\"\nallow_clients = [\"10.0.0.0/8\", \"192.0.2.9\"]\n"+
		"[[listeners]]\naddress = \"[fd00::0:5]:1082\"\nname = \"v6.office-2_b\"\n"+
		"[[listeners]]\naddress = \"127.0.0.1:1083\"\nauth = \"none\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Server.Listen) != 0 {
		t.Errorf("server.listen = %v, want none when only [[listeners]] are given", c.Server.Listen)
	}
	want := []config.Listener{
		{Address: "10.0.0.5:1081", NoAuth: true, AllowClients: []netip.Prefix{
			netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.9/32")}, Protocols: config.DefaultProtocols},
		{Address: "[fd00::5]:1082", Name: "v6.office-2_b", Protocols: config.DefaultProtocols},
		{Address: "127.0.0.1:1083", NoAuth: true, Protocols: config.DefaultProtocols},
	}
	if !reflect.DeepEqual(c.Listeners, want) {
		t.Errorf("listeners = %+v\nwant %+v", c.Listeners, want)
	}
}

// TestEgressErrors: each error names the key path and the bad value.
func TestEgressErrors(t *testing.T) {
	user := userTOML("u", "pw")
	tests := []struct {
		name string
		text string
		key  string
		want string // the value quoted in the message
	}{
		{"bad interface name", user + "interface = \"eth 1\"\n", "users[0].interface", "eth 1"},
		{"interface and interfaces", user + "interface = \"eth1\"\ninterfaces = [\"eth2\"]\n", "users[0].interfaces", "eth2"},
		{"empty interfaces", user + "interfaces = []\n", "users[0].interfaces", "[]"},
		{"ingress in a list", user + "interfaces = [\"eth1\", \"ingress\"]\n", "users[0].interfaces[1]", "ingress"},
		{"duplicate in list", user + "interfaces = [\"eth1\", \"eth1\"]\n", "users[0].interfaces[1]", "eth1"},
		{"bad name in list", user + "interfaces = [\"eth1\", \"a/b\"]\n", "users[0].interfaces[1]", "a/b"},
		{"unknown strategy", user + "interfaces = [\"eth1\"]\nstrategy = \"random\"\n", "users[0].strategy", "random"},
		{"strategy without list", user + "interface = \"eth1\"\nstrategy = \"hash\"\n", "users[0].strategy", "hash"},
		{"source not an IP", user + "source_ip = \"host.example\"\n", "users[0].source_ip", "host.example"},
		{"source unspecified", user + "source_ip = \"0.0.0.0\"\n", "users[0].source_ip", "0.0.0.0"},
		{"source and interface", user + "source_ip = \"10.1.1.1\"\ninterface = \"eth1\"\n", "users[0].source_ip", "10.1.1.1"},
		{"negative mark", user + "mark = -1\n", "users[0].mark", "-1"},
		{"mark too large", user + "mark = 4294967296\n", "users[0].mark", "4294967296"},
		{"listener without address", user + "[[listeners]]\nauth = \"password\"\n", "listeners[0].address", ""},
		{"listener bad address", user + "[[listeners]]\naddress = \"nohost\"\n", "listeners[0].address", "nohost"},
		{"listener same as server.listen", user + "[server]\nlisten = [\"127.0.0.1:1080\"]\n[[listeners]]\naddress = \"127.0.0.1:1080\"\n", "listeners[0].address", "127.0.0.1:1080"},
		{"two listeners same address", user + "[[listeners]]\naddress = \"10.0.0.1:1\"\n[[listeners]]\naddress = \"10.0.0.1:01\"\n", "listeners[1].address", "10.0.0.1:01"},
		{"listener name with a space", user + "[[listeners]]\naddress = \"127.0.0.1:1\"\nname = \"my office\"\n", "listeners[0].name", "my office"},
		{"listener name too long", user + "[[listeners]]\naddress = \"127.0.0.1:1\"\nname = \"" + strings.Repeat("n", 65) + "\"\n", "listeners[0].name", strings.Repeat("n", 65)},
		{"two listeners same name", user + "[[listeners]]\naddress = \"127.0.0.1:1\"\nname = \"a\"\n[[listeners]]\naddress = \"127.0.0.1:2\"\nname = \"a\"\n", "listeners[1].name", "a"},
		{"unknown auth", user + "[[listeners]]\naddress = \"127.0.0.1:1\"\nauth = \"gssapi\"\n", "listeners[0].auth", "gssapi"},
		{"password auth without users", "[[listeners]]\naddress = \"127.0.0.1:1\"\n", "listeners[0].auth", "password"},
		{"open no-auth listener", "[[listeners]]\naddress = \"10.0.0.5:1081\"\nauth = \"none\"\n", "listeners[0].allow_clients", "[]"},
		{"open no-auth on all addresses", "[[listeners]]\naddress = \":1081\"\nauth = \"none\"\n", "listeners[0].allow_clients", "[]"},
		{"bad client CIDR", "[[listeners]]\naddress = \"10.0.0.5:1081\"\nauth = \"none\"\nallow_clients = [\"10.0.0.1/8\"]\n", "listeners[0].allow_clients[0]", "10.0.0.1/8"},
		{"listener egress checked", user + "[[listeners]]\naddress = \"127.0.0.1:1\"\ninterfaces = [\"x\"]\nstrategy = \"rr\"\n", "listeners[0].strategy", "rr"},
		{"metrics on a listener's address", user + "[metrics]\nlisten = \"127.0.0.1:9\"\n[[listeners]]\naddress = \"127.0.0.1:9\"\n", "metrics.listen", "127.0.0.1:9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.text)
			if err == nil {
				t.Fatal("no error")
			}
			var ce *config.Error
			found := false
			for _, e := range unwrapAll(err) {
				if errors.As(e, &ce) && ce.Key == tt.key {
					found = true
					if ce.Value != tt.want {
						t.Errorf("value = %q, want %q", ce.Value, tt.want)
					}
				}
			}
			if !found {
				t.Errorf("no error for key %s in: %v", tt.key, err)
			}
			if !strings.Contains(err.Error(), tt.key) {
				t.Errorf("message %q does not name %s", err, tt.key)
			}
		})
	}
}

func TestUnknownKeyInListener(t *testing.T) {
	_, err := parse(t, "[[listeners]]\naddress = \"127.0.0.1:1\"\nauth = \"none\"\n[[listeners]]\naddress = \"127.0.0.1:2\"\nauth = \"none\"\nallow = [\"x\"]\n")
	if err == nil || !strings.Contains(err.Error(), "listeners[1].allow") || strings.Contains(err.Error(), "listeners[0].allow") {
		t.Fatalf("err = %v, want unknown key listeners[1].allow", err)
	}
}

// unwrapAll flattens errors.Join trees.
func unwrapAll(err error) []error {
	var out []error
	var walk func(error)
	walk = func(e error) {
		out = append(out, e)
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
		} else if u := errors.Unwrap(e); u != nil {
			walk(u)
		}
	}
	walk(err)
	return out
}
