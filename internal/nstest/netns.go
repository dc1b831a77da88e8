package nstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NS is a network namespace made by the harness.
type NS struct {
	Name string
}

var (
	nsSeq     atomic.Int64
	staleOnce sync.Map // prefix -> *sync.Once
)

// NewName returns a fresh namespace name PREFIX-PID-N, with -ROLE appended
// when role is set. The first call for a prefix removes the namespaces of
// that prefix left by dead processes (RemoveStale).
func NewName(prefix, role string) string {
	once, _ := staleOnce.LoadOrStore(prefix, new(sync.Once))
	once.(*sync.Once).Do(func() { _ = RemoveStale(prefix) })
	name := fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), nsSeq.Add(1))
	if role != "" {
		name += "-" + role
	}
	return name
}

// Create makes the namespace name, as the kernel makes it: only lo, and
// that down. Delete undoes it. For setup outside a test; tests use New.
func Create(name string) (*NS, error) {
	if _, err := IPErr("netns", "add", name); err != nil {
		return nil, err
	}
	return &NS{Name: name}, nil
}

// New makes a namespace named by NewName(prefix, role) (only lo, down)
// that is deleted (killing what still runs in it) when the test ends.
func New(tb testing.TB, prefix, role string) *NS {
	tb.Helper()
	RequireRoot(tb)
	ns, err := Create(NewName(prefix, role))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			tb.Errorf("delete namespace: %v", err)
		}
	})
	return ns
}

func (ns *NS) String() string { return ns.Name }

// Delete kills the processes in the namespace (only ever processes a test
// started there), deletes it and its /etc/netns directory.
func (ns *NS) Delete() error {
	return DeleteNamed(ns.Name)
}

// DeleteNamed is Delete by name.
func DeleteNamed(name string) error {
	if out, err := IPErr("netns", "pids", name); err == nil {
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	_, err := IPErr("netns", "del", name)
	return errors.Join(err, os.RemoveAll(EtcDir(name)))
}

// RemoveStale deletes the namespaces PREFIX-PID-... and their /etc/netns
// directories whose process PID no longer exists (a run killed before its
// cleanup).
func RemoveStale(prefix string) error {
	return removeWhere(prefix, func(pid int) bool { return pid != os.Getpid() && !PidAlive(pid) })
}

// RemoveOwned deletes the namespaces PREFIX-PID-... of process pid and
// their /etc/netns directories: for a reaper process that outlives the
// test process pid.
func RemoveOwned(prefix string, pid int) error {
	return removeWhere(prefix, func(p int) bool { return p == pid })
}

func removeWhere(prefix string, remove func(pid int) bool) error {
	var errs []error
	for _, dir := range []string{"/run/netns", "/etc/netns"} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue // absent: nothing stale
		}
		for _, e := range entries {
			pid, ok := OwnerPid(prefix, e.Name())
			if !ok || !remove(pid) {
				continue
			}
			if dir == "/run/netns" {
				errs = append(errs, DeleteNamed(e.Name()))
			} else {
				errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
			}
		}
	}
	return errors.Join(errs...)
}

// OwnerPid is the PID in a name PREFIX-PID-...
func OwnerPid(prefix, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	if !ok {
		return 0, false
	}
	pidStr, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidStr)
	return pid, err == nil && pid > 0
}

// PidAlive reports whether process pid exists.
func PidAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// EtcDir is where `ip netns exec NS` finds files it bind-mounts over
// /etc (resolv.conf).
func EtcDir(ns string) string { return filepath.Join("/etc/netns", ns) }

// IP runs `ip -n NS ARGS...` and fails the test on error.
func (ns *NS) IP(tb testing.TB, args ...string) string {
	tb.Helper()
	return IP(tb, append([]string{"-n", ns.Name}, args...)...)
}

// IPErr is IP returning the error.
func (ns *NS) IPErr(args ...string) (string, error) {
	return IPErr(append([]string{"-n", ns.Name}, args...)...)
}

// Sysctl sets "key=value" settings inside the namespace.
func (ns *NS) Sysctl(settings ...string) error { return Sysctl(ns.Name, settings...) }

// Sysctl sets "key=value" settings inside the namespace ns.
func Sysctl(ns string, settings ...string) error {
	_, err := IPErr(append([]string{"netns", "exec", ns, "sysctl", "-q", "-w"}, settings...)...)
	return err
}

// WriteResolvConf makes `ip netns exec NS` processes (a daemon) read text
// as /etc/resolv.conf. Delete removes it.
func (ns *NS) WriteResolvConf(text string) error {
	if err := os.MkdirAll(EtcDir(ns.Name), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(EtcDir(ns.Name), "resolv.conf"), []byte(text), 0o644)
}

// Do runs fn inside the namespace (see Enter).
func (ns *NS) Do(fn func() error) error { return Enter(ns.Name, fn) }

// Command is cmd run inside the namespace by `ip netns exec`, which execs
// it (no fork: the PID is the command's), with CleanEnv. If this test
// process dies, the kernel kills the command too.
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
	cmd.Env = append([]string{}, CleanEnv...)
	cmd.SysProcAttr = ChildAttr()
	return cmd
}

// Run runs a command inside the namespace, bounded by ctx; see the
// package-level Run.
func (ns *NS) Run(ctx context.Context, stdin []byte, name string, args ...string) (stdout, stderr string, err error) {
	return Run(ctx, stdin, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// ListenErr opens a stream listener inside the namespace.
func (ns *NS) ListenErr(network, addr string) (net.Listener, error) {
	return ListenIn(ns.Name, network, addr)
}

// ListenIn opens a stream listener inside the namespace ns.
func ListenIn(ns, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := Enter(ns, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// Listen is ListenErr closed at the end of the test.
func (ns *NS) Listen(tb testing.TB, network, addr string) net.Listener {
	tb.Helper()
	l, err := ns.ListenErr(network, addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

// ListenPacketErr opens a packet socket inside the namespace.
func (ns *NS) ListenPacketErr(network, addr string) (net.PacketConn, error) {
	return ListenPacketIn(ns.Name, network, addr)
}

// ListenPacketIn opens a packet socket inside the namespace ns.
func ListenPacketIn(ns, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := Enter(ns, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// ListenPacket is ListenPacketErr closed at the end of the test.
func (ns *NS) ListenPacket(tb testing.TB, network, addr string) net.PacketConn {
	tb.Helper()
	pc, err := ns.ListenPacketErr(network, addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pc.Close() })
	return pc
}

// Dialer dials from inside the namespace, each dial bounded by timeout.
func (ns *NS) Dialer(timeout time.Duration) Dialer { return Dialer{NS: ns.Name, Timeout: timeout} }

// Dialer dials from inside namespace NS. It is a proxy.Dialer and a
// proxy.ContextDialer, so golang.org/x/net/proxy can reach a SOCKS server
// through it. Addresses must be IP literals: name resolution would run on
// other goroutines, outside the namespace.
type Dialer struct {
	NS      string
	Timeout time.Duration
	// LocalAddr, when set, is the source address ("IP" or "IP:port").
	LocalAddr string
}

func (d Dialer) Dial(network, addr string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, addr)
}

func (d Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if host, _, err := net.SplitHostPort(addr); err != nil || net.ParseIP(host) == nil {
		return nil, fmt.Errorf("nstest.Dialer: %q is not an IP literal address", addr)
	}
	nd := net.Dialer{Timeout: d.Timeout}
	if d.LocalAddr != "" {
		la := d.LocalAddr
		if _, _, err := net.SplitHostPort(la); err != nil {
			la = net.JoinHostPort(la, "0")
		}
		var err error
		if strings.HasPrefix(network, "udp") {
			nd.LocalAddr, err = net.ResolveUDPAddr(network, la)
		} else {
			nd.LocalAddr, err = net.ResolveTCPAddr(network, la)
		}
		if err != nil {
			return nil, err
		}
	}
	var c net.Conn
	err := Enter(d.NS, func() error {
		var err error
		c, err = nd.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Veth adds a veth pair: aDev in a, bDev in b, both up. Made directly in
// their namespaces, the names never appear in the root namespace.
func Veth(tb testing.TB, a *NS, aDev string, b *NS, bDev string) {
	tb.Helper()
	if err := VethErr(a, aDev, b, bDev); err != nil {
		tb.Fatal(err)
	}
}

// VethErr is Veth returning the error.
func VethErr(a *NS, aDev string, b *NS, bDev string) error {
	if _, err := a.IPErr("link", "add", aDev, "type", "veth", "peer", "name", bDev, "netns", b.Name); err != nil {
		return err
	}
	if _, err := a.IPErr("link", "set", aDev, "up"); err != nil {
		return err
	}
	_, err := b.IPErr("link", "set", bDev, "up")
	return err
}

// AddAddr adds addresses (CIDR, IPv6 with nodad: usable at once) to dev.
func (ns *NS) AddAddr(dev string, cidrs ...string) error {
	for _, c := range cidrs {
		args := []string{"addr", "add", c, "dev", dev}
		if strings.Contains(c, ":") {
			args = append([]string{"-6"}, append(args, "nodad")...)
		}
		if _, err := ns.IPErr(args...); err != nil {
			return err
		}
	}
	return nil
}
