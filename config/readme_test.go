package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ifsocks/ifsocks/config"
)

// TestLoadReadmeExample loads the TOML block of the README's
// Configuration section, so that the example a reader copies first is a
// configuration the daemon accepts, with the defaults it says.
func TestLoadReadmeExample(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n## Configuration\n")
	if !ok {
		t.Fatal("README has no ## Configuration section")
	}
	_, block, ok := strings.Cut(rest, "\n```toml\n")
	if !ok {
		t.Fatal("README's Configuration section has no ```toml block")
	}
	block, _, ok = strings.Cut(block, "\n```")
	if !ok {
		t.Fatal("README's toml block does not end")
	}
	// The one placeholder: where the output of ifsocks hash-password goes.
	const placeholder = `"$2b$10$..."`
	if !strings.Contains(block, placeholder) {
		t.Fatalf("README's example lost its password_hash placeholder %s", placeholder)
	}
	block = strings.Replace(block, placeholder, `"$2b$10$`+strings.Repeat("a", 53)+`"`, 1)
	path := filepath.Join(t.TempDir(), "readme.toml")
	if err := os.WriteFile(path, []byte(block+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path)
	if err != nil {
		t.Fatalf("the README's configuration example does not load: %v\n%s", err, block)
	}
	if c.Server.HandshakeTimeout != config.DefaultHandshakeTimeout || c.Server.IdleTimeout != config.DefaultIdleTimeout ||
		c.Server.ConnectTimeout != config.DefaultConnectTimeout || c.Server.ShutdownTimeout != config.DefaultShutdownTimeout {
		t.Errorf("the README's example shows timeouts other than the defaults: %+v", c.Server)
	}
	if len(c.Users) == 0 || len(c.Listeners) == 0 {
		t.Errorf("the README's example has %d users and %d listeners, want both shown", len(c.Users), len(c.Listeners))
	}
}
