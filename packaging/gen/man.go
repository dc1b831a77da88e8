package main

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/cpuguy83/go-md2man/v2/md2man"
)

// manSkip lists the README sections that are not reference: how to
// develop, benchmark or demonstrate ifsocks. Every other "## " section goes
// into the manual page, so a section added to the README reaches it too.
var manSkip = map[string]bool{
	"Quick start":                           true,
	"The two commands":                      true,
	"Performance":                           true,
	"Seeing per-user egress on one machine": true,
	"Layout":                                true,
	"Fuzzing":                               true,
	"Installing the Debian package":         true,
}

// manRequired are sections the page cannot do without; the build fails
// when the README loses one of them.
var manRequired = []string{"Requirements", "Configuration", "Operations", "Checking a configuration"}

// manPage renders ifsocks(8): NAME; SYNOPSIS from the usage block of
// main.go's doc comment; DESCRIPTION from the README's opening paragraphs;
// then the README's reference sections, headings upper-cased as man pages
// have them; FILES and SEE ALSO.
func manPage(readme, mainGo []byte, version string) ([]byte, error) {
	intro, sections, err := splitReadme(string(readme))
	if err != nil {
		return nil, err
	}
	usage, err := usageBlock(string(mainGo))
	if err != nil {
		return nil, err
	}
	var md strings.Builder
	fmt.Fprintf(&md, "%% IFSOCKS 8 \"\" \"ifsocks %s\" \"System Administration\"\n\n", version)
	md.WriteString("# NAME\n\nifsocks - SOCKS5 proxy daemon with a per-user egress network interface\n\n")
	md.WriteString("# SYNOPSIS\n\n```\n" + usage + "```\n\n")
	md.WriteString("# DESCRIPTION\n\n" + intro + "\n")
	have := map[string]bool{}
	for _, s := range sections {
		have[s.title] = true
		if manSkip[s.title] {
			continue
		}
		fmt.Fprintf(&md, "# %s\n\n%s\n", strings.ToUpper(s.title), demote(s.body))
	}
	for _, r := range manRequired {
		if !have[r] {
			return nil, fmt.Errorf("README.md has no section %q for the manual page", r)
		}
	}
	md.WriteString(manFiles)
	return md2man.Render([]byte(md.String())), nil
}

const manFiles = `# FILES

/etc/ifsocks/config.toml
: the configuration (root:ifsocks 0640: it holds password hashes)

/usr/share/doc/ifsocks/examples/config.toml.example
: every key with its default and what it does

/lib/systemd/system/ifsocks.service
: the systemd unit; ` + "`systemctl reload ifsocks`" + ` re-reads the configuration

/var/lib/ifsocks
: the service's state directory

# SEE ALSO

systemctl(1), journalctl(1), systemd.exec(5), ip(8), curl(1)
`

type section struct{ title, body string }

// splitReadme returns the text between the title and the first "## "
// heading, and the "## " sections in order. Headings inside fenced code
// blocks are not headings.
func splitReadme(readme string) (string, []section, error) {
	var (
		intro    strings.Builder
		sections []section
		cur      *strings.Builder
		fenced   bool
		titled   bool
	)
	for line := range strings.Lines(readme) {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
		}
		switch {
		case fenced || strings.HasPrefix(line, "```"):
		case !titled && strings.HasPrefix(line, "# "):
			titled = true
			continue
		case strings.HasPrefix(line, "## "):
			sections = append(sections, section{title: strings.TrimSpace(line[3:])})
			cur = &strings.Builder{}
			continue
		}
		if cur == nil {
			intro.WriteString(line)
			continue
		}
		cur.WriteString(line)
		sections[len(sections)-1].body = cur.String()
	}
	if !titled || len(sections) == 0 {
		return "", nil, errors.New("README.md: no title or no sections")
	}
	return strings.TrimSpace(intro.String()) + "\n", sections, nil
}

// demote turns the "### " headings of a README section into the second
// level of the page (.SS under the section's .SH), and its tables into
// lists: a table as wide as the README's does not fit the 80 columns of a
// terminal, where man (and lintian) read it.
func demote(body string) string {
	var (
		b      strings.Builder
		table  []string
		fenced bool
	)
	for line := range strings.Lines(body) {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
		}
		if !fenced && strings.HasPrefix(line, "|") {
			table = append(table, line)
			continue
		}
		if table != nil {
			b.WriteString(tableList(table))
			table = nil
		}
		if !fenced && strings.HasPrefix(line, "### ") {
			line = line[1:]
		}
		b.WriteString(line)
	}
	if table != nil {
		b.WriteString(tableList(table))
	}
	return b.String()
}

// tableList renders a markdown table (a header row, the rule, data rows)
// as a list with one item per row: the first cell, the middle ones in
// parentheses after their column's name, then the last.
func tableList(rows []string) string {
	cells := func(row string) []string {
		row = strings.TrimSpace(row)
		row = strings.TrimSuffix(strings.TrimPrefix(row, "|"), "|")
		c := strings.Split(row, " | ")
		for i := range c {
			c[i] = strings.TrimSpace(c[i])
		}
		return c
	}
	if len(rows) < 3 {
		return strings.Join(rows, "")
	}
	head := cells(rows[0])
	var b strings.Builder
	for _, row := range rows[2:] {
		c := cells(row)
		b.WriteString("- " + c[0])
		var mid []string
		for i := 1; i < len(c)-1; i++ {
			if c[i] != "" && i < len(head) {
				mid = append(mid, head[i]+": "+c[i])
			}
		}
		if len(mid) > 0 {
			b.WriteString(" (" + strings.Join(mid, "; ") + ")")
		}
		if len(c) > 1 && c[len(c)-1] != "" {
			b.WriteString(": " + c[len(c)-1])
		}
		b.WriteString("\n")
	}
	return b.String() + "\n"
}

var usageRe = regexp.MustCompile(`(?s)// Usage:\n//\n(.*?)\n(?://\n)?package `)

// usageBlock is the usage lines of the command's doc comment.
func usageBlock(mainGo string) (string, error) {
	m := usageRe.FindStringSubmatch(mainGo)
	if m == nil {
		return "", errors.New("main.go: no \"// Usage:\" block in the doc comment")
	}
	var b bytes.Buffer
	for line := range strings.Lines(m[1] + "\n") {
		line = strings.TrimPrefix(line, "//")
		line = strings.TrimPrefix(line, "\t")
		b.WriteString(line)
	}
	return b.String(), nil
}
