// Command gen makes the files of the Debian package that are derived from
// the repository, so that they cannot drift from it:
//
//	gen man README.md main.go VERSION   the manual page ifsocks(8), roff on stdout
//	gen config config.toml.example      the installed /etc/ifsocks/config.toml
//
// packaging/deb.sh runs it at build time; nothing it writes is committed.
// It is not part of the daemon.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	switch {
	case len(args) == 4 && args[0] == "man":
		readme, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		mainGo, err := os.ReadFile(args[2])
		if err != nil {
			return err
		}
		page, err := manPage(readme, mainGo, args[3])
		if err != nil {
			return err
		}
		_, err = out.Write(page)
		return err
	case len(args) == 2 && args[0] == "config":
		example, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		cfg, err := packagedConfig(example)
		if err != nil {
			return fmt.Errorf("%s: %w", args[1], err)
		}
		_, err = out.Write(cfg)
		return err
	}
	return fmt.Errorf("usage: gen man README.md main.go VERSION | gen config config.toml.example")
}
