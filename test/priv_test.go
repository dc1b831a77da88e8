//go:build linux

package test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// What the daemon needs in privileges, checked by running it as uid/gid
// 65534 with chosen capabilities (setpriv) inside P:
//
//   - from Linux 5.7 an unprivileged process may set SO_BINDTODEVICE on a
//     socket not yet bound to a device, which is every socket ifsocks
//     binds, so per-user egress works with no capability at all;
//   - a socket the system has already bound to a device (`ip vrf exec`,
//     or any cgroup program that sets bound_dev_if at creation) can only be
//     re-bound with CAP_NET_RAW: without it the flow fails closed, reply
//     0x03 and an error-level flow line naming the interface and EPERM;
//   - a listen port below 1024 needs CAP_NET_BIND_SERVICE.

type privOutcome int

const (
	egressWorks   privOutcome = iota // each user's traffic leaves by its NIC
	bindRefused                      // CONNECT gets 0x03, error logged, nothing sent
	listenRefused                    // the daemon cannot start
)

func TestPrivileges(t *testing.T) {
	nstest.RequireRoot(t)
	for _, tool := range []string{"setpriv", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s: %v (util-linux setpriv is a test dependency)", tool, err)
		}
	}
	modern, release := kernelAtLeast(t, 5, 7)
	t.Logf("kernel %s (>= 5.7: %v)", release, modern)
	// Before 5.7 every SO_BINDTODEVICE needs CAP_NET_RAW.
	noCapsEgress := bindRefused
	if modern {
		noCapsEgress = egressWorks
	}
	cases := []struct {
		name     string
		caps     []string // capability names for setpriv, without "cap_"
		prebound bool     // every new socket bound to cl0 from birth
		port     int
		want     privOutcome
	}{
		{name: "net_raw only", caps: []string{"net_raw"}, port: 1080, want: egressWorks},
		{name: "no capabilities", port: 1080, want: noCapsEgress},
		{name: "net_bind_service only, port 80", caps: []string{"net_bind_service"}, port: 80, want: noCapsEgress},
		{name: "no capabilities, port 80", port: 80, want: listenRefused},
		{name: "no capabilities, sockets pre-bound", prebound: true, port: 1080, want: bindRefused},
		{name: "net_raw only, sockets pre-bound", caps: []string{"net_raw"}, prebound: true, port: 1080, want: egressWorks},
	}
	bin := privBinary(t, privDir(t))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			topo := newPrivTopology(t)
			dir := privDir(t)
			listen := net.JoinHostPort(proxyV4, strconv.Itoa(tc.port))
			cfg := writePrivConfig(t, dir, privConfig(t, listen, "10s"))

			var argv []string
			var procs string
			if tc.prebound {
				procs = preboundCgroup(t, topo.P, "cl0")
				// Join the group first, so that every socket of the
				// daemon, listeners included, is born bound to cl0.
				argv = append(argv, "sh", "-c", `echo $$ > "$1" || exit 97; shift; exec "$@"`, "sh", procs)
			}
			argv = append(argv, "ip", "netns", "exec", topo.P)
			argv = append(argv, setprivArgs(tc.caps)...)
			argv = append(argv, bin, "-config", cfg)
			od := startWrapped(t, topo, bin, cfg, argv)

			if tc.want == listenRefused {
				wantListenRefused(t, od, listen)
				return
			}
			od.waitDaemonExec(t)
			wantCreds(t, od.pid(), tc.caps)
			if procs != "" {
				wantInCgroup(t, od.pid(), procs)
			}
			if err := od.waitListening([]string{listen}, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			switch tc.want {
			case egressWorks:
				wantPerUserEgress(t, od, listen)
			case bindRefused:
				wantBindRefused(t, od, listen)
			}
			// Without CAP_NET_ADMIN the netlink watch must work too: a
			// dump request sent to the subscribed groups gets EPERM,
			// and the watcher would retry every second.
			if n := od.countMsg("netlink subscription lost; resubscribing"); n > 0 {
				t.Errorf("%d netlink resubscriptions: %v", n, od.lastMsg("netlink subscription lost; resubscribing"))
			}
			od.stopClean(t)
		})
	}
}

// setprivArgs drops to uid/gid 65534 with exactly caps. Ambient
// capabilities survive the exec of a binary without file capabilities;
// they must also be inheritable. setpriv re-arms the parent-death signal,
// which the kernel clears when the uid changes.
func setprivArgs(caps []string) []string {
	args := []string{"setpriv", "--reuid", strconv.Itoa(nobody), "--regid", strconv.Itoa(nobody), "--clear-groups"}
	if len(caps) == 0 {
		args = append(args, "--inh-caps", "-all")
	} else {
		list := "+" + strings.Join(caps, ",+")
		args = append(args, "--inh-caps", list, "--ambient-caps", list)
	}
	return append(args, "--pdeathsig", "keep", "--")
}

var capBits = map[string]uint{"net_bind_service": unix.CAP_NET_BIND_SERVICE, "net_raw": unix.CAP_NET_RAW}

// wantCreds checks that the daemon process runs as 65534 with exactly the
// capabilities asked for, effective and ambient.
func wantCreds(t *testing.T, pid int, caps []string) {
	t.Helper()
	st, err := procStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	var mask uint64
	for _, c := range caps {
		mask |= 1 << capBits[c]
	}
	want := fmt.Sprintf("%016x", mask)
	ids := strings.Repeat(strconv.Itoa(nobody)+"\t", 3) + strconv.Itoa(nobody)
	for k, v := range map[string]string{"Uid": ids, "Gid": ids, "Groups": "", "CapEff": want, "CapPrm": want, "CapAmb": want} {
		if st[k] != v {
			t.Errorf("daemon /proc/%d/status %s: %q, want %q", pid, k, st[k], v)
		}
	}
}

// wantInCgroup checks that pid is a member of the cgroup whose
// cgroup.procs is procs.
func wantInCgroup(t *testing.T, pid int, procs string) {
	t.Helper()
	b, err := os.ReadFile(procs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Fields(string(b)), strconv.Itoa(pid)) {
		t.Fatalf("daemon pid %d is not in %s (members: %q)", pid, procs, b)
	}
}

// wantPerUserEgress checks both users in both families: whoami in U sees each
// user's NIC address. Without binding every flow would leave by wan1 (the
// lower metric), and U's strict rp_filter drops wan2's address on wan1.
func wantPerUserEgress(t *testing.T, od *opsDaemon, proxy string) {
	t.Helper()
	for _, c := range []struct {
		u      nstest.User
		target string
		want   string
	}{
		{opsAlice, net.JoinHostPort(svcV4, "8080"), wan1V4},
		{opsDave, net.JoinHostPort(svcV4, "8080"), wan2V4},
		{opsAlice, net.JoinHostPort(svcV6, "8080"), wan1V6},
		{opsDave, net.JoinHostPort(svcV6, "8080"), wan2V6},
	} {
		got, err := whoamiTry(od.topo.C, proxy, c.u, c.target)
		if err != nil {
			t.Errorf("%s to %s: %v", c.u.Name, c.target, err)
			continue
		}
		if got != c.want {
			t.Errorf("%s to %s: upstream saw %s, want %s (%s)", c.u.Name, c.target, got, c.want, c.u.Interface)
		}
	}
	line := od.waitFlow(t, 5*time.Second, func(m map[string]any) bool {
		return m["user"] == opsDave.Name && m["target"] == net.JoinHostPort(svcV4, "8080")
	})
	wantFields(t, line, map[string]any{"level": "info", "interface": "wan2", "outcome": "ok", "reply": float64(0)})
	if local, _ := line["local"].(string); !strings.HasPrefix(local, wan2V4+":") {
		t.Errorf("dave's flow line: local %q, want %s:port", local, wan2V4)
	}
}

// wantBindRefused checks that each user's CONNECT fails with "network
// unreachable" and an error-level flow line that names the interface and
// the errno: the flow fails closed instead of leaving by the default route.
func wantBindRefused(t *testing.T, od *opsDaemon, proxy string) {
	t.Helper()
	for _, u := range []nstest.User{opsAlice, opsDave} {
		target := net.JoinHostPort(svcV4, "8080")
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		res, err := socksDo(ctx, od.topo.C, socksRequest{proxy: proxy, user: u.Name, pass: u.Password, target: target})
		cancel()
		if res.conn != nil {
			res.conn.Close()
		}
		if err != nil {
			t.Fatalf("%s: %v", u.Name, err)
		}
		if res.authStatus != 0 || res.reply != 3 || !res.closed {
			t.Errorf("%s: auth %d reply %#x closed %v, want auth 0, reply 0x03, closed", u.Name, res.authStatus, res.reply, res.closed)
		}
		line := od.waitFlow(t, 5*time.Second, func(m map[string]any) bool {
			return m["user"] == u.Name && m["target"] == target
		})
		wantFields(t, line, map[string]any{"level": "error", "interface": u.Interface, "outcome": "error", "reply": float64(3)})
		msg, _ := line["error"].(string)
		for _, want := range []string{strconv.Quote(u.Interface), "SO_BINDTODEVICE", unix.EPERM.Error()} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s's flow line: error %q does not contain %q", u.Name, msg, want)
			}
		}
		if _, ok := line["local"]; ok {
			t.Errorf("%s's flow line has a local address (%v): something was dialled", u.Name, line["local"])
		}
	}
}

// wantListenRefused checks that the daemon exits at start with an error
// naming the address and EACCES.
func wantListenRefused(t *testing.T, od *opsDaemon, listen string) {
	t.Helper()
	select {
	case <-od.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon still running 10s after start; it should not listen on %s without CAP_NET_BIND_SERVICE", listen)
	}
	if od.exitErr() == nil {
		t.Errorf("daemon exited with status 0, want a failure")
	}
	logs := od.logs.String()
	for _, want := range []string{"listen on " + listen, unix.EACCES.Error()} {
		if !strings.Contains(logs, want) {
			t.Errorf("daemon output does not contain %q:\n%s", want, logs)
		}
	}
}
