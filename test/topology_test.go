package test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Addresses of the test topology. Everything lives in 10.231.0.0/16 and
// fd31::/16 inside our own namespaces; no test ever sends traffic elsewhere.
const (
	clientV4 = "10.231.0.2" // C c0
	proxyV4  = "10.231.0.1" // P cl0, where the daemon listens
	wan1V4   = "10.231.1.1" // P wan1 (alice)
	wan2V4   = "10.231.2.1" // P wan2 (bob)
	svcV4    = "10.231.9.9" // U service address (whoami + DNS)
	wan1V6   = "fd31:1::1"
	wan2V6   = "fd31:2::1"
	svcV6    = "fd31:9::9"

	proxyListen4 = "10.231.0.1:1080"
	proxyListen6 = "[fd31::1]:1080"
	nsPrefix     = "ifst-"
)

// topology is the C (client) / P (proxy) / U (upstream) namespace triple of
// one test process. Names embed our pid so parallel runs cannot collide and
// leftovers of dead runs can be recognised.
type topology struct {
	C, P, U string
	created []string // namespaces actually created, for teardown
}

func nsNames(pid int) (c, p, u string) {
	base := fmt.Sprintf("%s%d-", nsPrefix, pid)
	return base + "c", base + "p", base + "u"
}

// etcDir is where `ip netns exec P` finds files to bind-mount over /etc.
func etcDir(ns string) string { return filepath.Join("/etc/netns", ns) }

func newTopology(pid int) (*topology, error) {
	t := &topology{}
	t.C, t.P, t.U = nsNames(pid)
	if err := t.build(); err != nil {
		if derr := t.destroy(); derr != nil {
			err = fmt.Errorf("%w; teardown: %v", err, derr)
		}
		return nil, err
	}
	return t, nil
}

func (t *topology) build() error {
	for _, ns := range []string{t.C, t.P, t.U} {
		if _, err := ipCmd("netns", "add", ns); err != nil {
			return err
		}
		t.created = append(t.created, ns)
		// No DAD: addresses must be usable at once, not "tentative" for 1-2 s.
		if err := sysctl(ns, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"); err != nil {
			return err
		}
	}
	C, P, U := t.C, t.P, t.U
	steps := [][]string{
		{"-n", C, "link", "set", "lo", "up"},
		{"-n", P, "link", "set", "lo", "up"},
		{"-n", U, "link", "set", "lo", "up"},
		// Creating each veth pair directly inside its namespaces keeps the
		// fixed interface names out of the root namespace (no collisions).
		{"-n", C, "link", "add", "c0", "type", "veth", "peer", "name", "cl0", "netns", P},
		{"-n", P, "link", "add", "wan1", "type", "veth", "peer", "name", "up1", "netns", U},
		{"-n", P, "link", "add", "wan2", "type", "veth", "peer", "name", "up2", "netns", U},
	}
	addrs := []struct{ ns, dev, v4, v6 string }{
		{C, "c0", "10.231.0.2/24", "fd31::2/64"},
		{P, "cl0", "10.231.0.1/24", "fd31::1/64"},
		{P, "wan1", "10.231.1.1/24", "fd31:1::1/64"},
		{U, "up1", "10.231.1.2/24", "fd31:1::2/64"},
		{P, "wan2", "10.231.2.1/24", "fd31:2::1/64"},
		{U, "up2", "10.231.2.2/24", "fd31:2::2/64"},
		// Service addresses on U's loopback: reachable only via up1/up2.
		{U, "lo", "10.231.9.9/32", "fd31:9::9/128"},
	}
	for _, a := range addrs {
		steps = append(steps,
			[]string{"-n", a.ns, "addr", "add", a.v4, "dev", a.dev},
			[]string{"-n", a.ns, "-6", "addr", "add", a.v6, "dev", a.dev, "nodad"},
			[]string{"-n", a.ns, "link", "set", a.dev, "up"})
	}
	// Two default routes, wan1 preferred by metric: without SO_BINDTODEVICE
	// every flow would leave through wan1, so bob's wan2 egress proves binding.
	steps = append(steps,
		[]string{"-n", P, "route", "add", "default", "via", "10.231.1.2", "dev", "wan1", "metric", "100"},
		[]string{"-n", P, "route", "add", "default", "via", "10.231.2.2", "dev", "wan2", "metric", "200"},
		[]string{"-n", P, "-6", "route", "add", "default", "via", "fd31:1::2", "dev", "wan1", "metric", "100"},
		[]string{"-n", P, "-6", "route", "add", "default", "via", "fd31:2::2", "dev", "wan2", "metric", "200"})
	for _, s := range steps {
		if _, err := ipCmd(s...); err != nil {
			return err
		}
	}
	// P must not route between C and U: only the daemon may bridge them.
	if err := sysctl(P, "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"); err != nil {
		return err
	}
	// Strict reverse-path filtering in U: a packet with source 10.231.2.1
	// arriving on up1 is dropped, so a reply proves the egress interface and
	// not just the source address.
	if err := sysctl(U, "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.default.rp_filter=1",
		"net.ipv4.conf.up1.rp_filter=1", "net.ipv4.conf.up2.rp_filter=1"); err != nil {
		return err
	}
	if err := os.MkdirAll(etcDir(P), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(etcDir(P), "resolv.conf"), []byte("nameserver "+svcV4+"\n"), 0o644)
}

func sysctl(ns string, settings ...string) error {
	_, err := ipCmd(append([]string{"netns", "exec", ns, "sysctl", "-q", "-w"}, settings...)...)
	return err
}

// destroy removes everything build created, killing processes still inside
// our namespaces (only ever processes this test binary started there).
func (t *topology) destroy() error {
	var errs []error
	for _, ns := range t.created {
		errs = append(errs, deleteNetns(ns))
	}
	t.created = nil
	if t.P != "" {
		errs = append(errs, os.RemoveAll(etcDir(t.P)))
	}
	return errors.Join(errs...)
}

func deleteNetns(ns string) error {
	if out, err := ipCmd("netns", "pids", ns); err == nil {
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	_, err := ipCmd("netns", "del", ns)
	return err
}

// ownerPid extracts the pid from "ifst-<pid>-<role>".
func ownerPid(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, nsPrefix)
	if !ok {
		return 0, false
	}
	pidStr, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidStr)
	return pid, err == nil && pid > 0
}

func pidAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// removeStale deletes ifst-* namespaces and /etc/netns dirs whose owning test
// process no longer exists (left by a run that was SIGKILLed).
func removeStale() error {
	var errs []error
	for _, dir := range []string{"/run/netns", "/etc/netns"} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue // directory absent: nothing stale
		}
		for _, e := range entries {
			pid, ok := ownerPid(e.Name())
			if !ok || pid == os.Getpid() || pidAlive(pid) {
				continue
			}
			if dir == "/run/netns" {
				errs = append(errs, deleteNetns(e.Name()))
			} else {
				errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
			}
		}
	}
	return errors.Join(errs...)
}
