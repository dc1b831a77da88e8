package main

import (
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// subcommand is a word that, as the first argument, runs something other
// than the daemon.
type subcommand struct {
	name, args, summary string
	run                 func(args []string, stdin io.Reader, stdout, stderr io.Writer) error
}

// subcommands lists them; usage and the unknown-subcommand error read it,
// so a new one is added here only.
var subcommands = []subcommand{
	{"hash-password", "[-cost N]", "read a password on stdin, print a bcrypt hash for password_hash", hashPassword},
	{"usage", "[-config FILE] [-period day|week|month] [-json]", "print each user's traffic and quota use from the accounting database", usageReport},
}

func findSubcommand(name string) (subcommand, bool) {
	for _, c := range subcommands {
		if c.name == name {
			return c, true
		}
	}
	return subcommand{}, false
}

func subcommandNames() string {
	names := make([]string, len(subcommands))
	for i, c := range subcommands {
		names[i] = c.name
	}
	return strings.Join(names, ", ")
}

// usage writes the synopsis, the subcommands and the flags.
func usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintln(w, "Usage:")
	fmt.Fprintln(w, "  ifsocks [flags]                 run the daemon in the foreground")
	fmt.Fprintln(w, "  ifsocks [-config FILE] -check   check the configuration against this host")
	for _, c := range subcommands {
		fmt.Fprintf(w, "  ifsocks %s %s\n      %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w, "\nFlags:")
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// versionString is the version set at build time, then what the Go
// toolchain recorded in the binary: the module's version, the VCS
// revision (with "+modified" for a dirty tree) and the Go version.
func versionString() string {
	mod, rev, modified, goVersion := "unknown", "unknown", false, "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		mod, goVersion = bi.Main.Version, bi.GoVersion
		if mod == "" {
			mod = "unknown"
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if modified {
		rev += "+modified"
	}
	return fmt.Sprintf("ifsocks %s (module %s, revision %s, %s)", version, mod, rev, goVersion)
}
