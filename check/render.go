package check

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// write prints the report: the file, the users' table and a legend, the
// errors, the warnings and a summary line. Findings are one line each, so
// they can be grepped and pasted; the terminal wraps them.
func (r *result) write(w io.Writer) {
	fmt.Fprintf(w, "config: %s\n\n", r.path)
	if len(r.rows) == 0 {
		fmt.Fprintln(w, "no [[users]]: clients connect without authentication and their flows use kernel routing")
	} else {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "USER\tINTERFACE\tSTATE\tIPV4\tIPV6\tDEFAULT4\tDEFAULT6\tNOTES")
		for _, rw := range r.rows {
			notes := "-"
			if len(rw.notes) > 0 {
				notes = strings.Join(rw.notes, "; ")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
				rw.user, rw.iface, rw.state, rw.ipv4, rw.ipv6, rw.default4, rw.default6, notes)
		}
		tw.Flush()
		fmt.Fprintln(w, "\nIPV6: global and unique-local addresses; link-local ones are not shown.")
		fmt.Fprintln(w, "DEFAULT4, DEFAULT6: a default route out of the interface, in any routing table.")
	}
	if len(r.poolLines) > 0 {
		fmt.Fprintln(w, "\nsource pools (source_ips):")
		for _, l := range r.poolLines {
			fmt.Fprintf(w, "  %s: %s\n", l.owner, l.text)
		}
	}
	for _, s := range []struct {
		sev  severity
		name string
	}{{failure, "errors"}, {warning, "warnings"}} {
		if r.count(s.sev) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s:\n", s.name)
		for _, f := range r.findings {
			if f.sev == s.sev {
				fmt.Fprintf(w, "  %s: %s\n", f.subject, f.text)
			}
		}
	}
	verdict := "OK"
	if r.count(failure) > 0 {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "\n%s: %s, %s\n", verdict, plural(r.count(failure), "error"), plural(r.count(warning), "warning"))
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
