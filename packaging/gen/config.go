package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// packagedListen is where the installed configuration listens: loopback
// only, since it has no users and so asks no client for a password.
const packagedListen = `listen = ["127.0.0.1:1080"]`

const packagedHeader = `# /etc/ifsocks/config.toml, installed by the ifsocks package (a conffile:
# your changes are kept on upgrades).
#
# As installed, ifsocks listens on 127.0.0.1:1080 only and asks for no
# password: the [[users]] below are commented out. To serve other hosts,
# add users (hash their passwords with: ifsocks hash-password) and set
# server.listen. Check a change with: ifsocks -check; apply it with:
# systemctl reload ifsocks. The file is root:ifsocks 0640: it holds
# password hashes. Every key is described below and in ifsocks(8).

`

// packagedConfig turns config.toml.example into the installed
// configuration: the [server] listen line set to loopback, and every table
// from the first [[users]] on commented out (the [[listeners]] examples
// already are). Everything else, defaults and comments, stays as the
// example has it, so the two cannot disagree.
func packagedConfig(example []byte) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(packagedHeader)
	listen, users := 0, false
	for line := range strings.Lines(string(example)) {
		text := strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(text, "[[users]]"):
			users = true
		case !users && strings.HasPrefix(text, "listen = "):
			text = packagedListen
			listen++
		}
		if users && text != "" && !strings.HasPrefix(text, "#") {
			text = "# " + text
		}
		b.WriteString(text)
		b.WriteByte('\n')
	}
	switch {
	case listen != 1:
		return nil, fmt.Errorf("want one uncommented [server] listen line before [[users]], found %d", listen)
	case !users:
		return nil, errors.New("no [[users]] table: the example changed; update packaging/gen")
	}
	return b.Bytes(), nil
}
