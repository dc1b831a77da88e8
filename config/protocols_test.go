package config_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/ifsocks/ifsocks/config"
)

func TestProtocols(t *testing.T) {
	noAuth := "[[listeners]]\naddress = \"127.0.0.1:1081\"\nauth = \"none\"\n"
	tests := []struct {
		name     string
		text     string
		server   config.Protocols
		listener config.Protocols
	}{
		{"default", userTOML("u", "pw"), config.DefaultProtocols, config.DefaultProtocols},
		{"server http only", "[server]\nprotocols = [\"http\"]\n" + userTOML("u", "pw"),
			config.Protocols{HTTP: true}, config.Protocols{}},
		{"listener inherits", "[server]\nlisten = []\nprotocols = [\"socks5\"]\n" + userTOML("u", "pw") + noAuth,
			config.Protocols{SOCKS5: true}, config.Protocols{SOCKS5: true}},
		{"socks4 on a no-auth listener", userTOML("u", "pw") + noAuth + "protocols = [\"socks4\", \"http\"]\n",
			config.DefaultProtocols, config.Protocols{SOCKS4: true, HTTP: true}},
		{"socks4 without users", "[server]\nprotocols = [\"socks5\", \"socks4\"]\n",
			config.Protocols{SOCKS5: true, SOCKS4: true}, config.Protocols{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(t, tt.text)
			if err != nil {
				t.Fatal(err)
			}
			if c.Server.Protocols != tt.server {
				t.Errorf("server protocols = %v, want %v", c.Server.Protocols, tt.server)
			}
			if len(c.Listeners) > 0 && c.Listeners[0].Protocols != tt.listener {
				t.Errorf("listener protocols = %v, want %v", c.Listeners[0].Protocols, tt.listener)
			}
		})
	}
}

func TestProtocolsErrors(t *testing.T) {
	pwListener := "[[listeners]]\naddress = \"127.0.0.1:1081\"\n"
	tests := []struct {
		name, text, key, value, reason string
	}{
		{"unknown", "[server]\nprotocols = [\"socks5\", \"ftp\"]\n", "server.protocols[1]", "ftp", "must be"},
		{"empty", "[server]\nprotocols = []\n", "server.protocols", "[]", "at least one"},
		{"twice", "[server]\nprotocols = [\"http\", \"http\"]\n", "server.protocols[1]", "http", "twice"},
		{"socks4 with users on server", "[server]\nprotocols = [\"socks4\"]\n" + userTOML("u", "pw"),
			"server.protocols[0]", "socks4", "no password"},
		{"socks4 on a password listener", userTOML("u", "pw") + pwListener + "protocols = [\"socks5\", \"socks4\"]\n",
			"listeners[0].protocols[1]", "socks4", "no password"},
		{"socks4 inherited by a password listener", "[server]\nlisten = []\nprotocols = [\"socks4\"]\n" + userTOML("u", "pw") + pwListener,
			"listeners[0].protocols", "socks4", "inherited"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.text)
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a *config.Error", err)
			}
			found := false
			for _, e := range unwrapAll(err) {
				if errors.As(e, &ce) && ce.Key == tt.key && ce.Value == tt.value && strings.Contains(ce.Reason, tt.reason) {
					found = true
				}
			}
			if !found {
				t.Errorf("err = %v, want key %s value %q reason containing %q", err, tt.key, tt.value, tt.reason)
			}
		})
	}
}

func TestProtocolsExample(t *testing.T) {
	c, err := config.Load("../config.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	if c.Server.Protocols != config.DefaultProtocols {
		t.Errorf("example protocols = %v, want the default %v", c.Server.Protocols, config.DefaultProtocols)
	}
}
