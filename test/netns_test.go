package test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cleanEnv is the environment of every external command we start. It drops
// http_proxy/ALL_PROXY/NO_PROXY (curl would honour them) and the pyenv shims
// on PATH, so the system /usr/bin tools run.
var cleanEnv = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=/root"}

// run executes a command with a deadline and returns stdout, stderr and the
// error (an *exec.ExitError for non-zero exit status).
func run(ctx context.Context, stdin []byte, name string, args ...string) (string, string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = cleanEnv
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w (stderr: %s)", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), errb.String(), err
}

// ipCmd runs `ip ARGS...` with a 10 s bound; used while building the topology,
// where errors are returned instead of failing a test.
func ipCmd(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _, err := run(ctx, nil, "ip", args...)
	return out, err
}

// inNetns runs fn on an OS thread that has been moved into the named network
// namespace. Sockets created by fn stay in that namespace for their whole
// life, whatever thread later uses them. fn runs on a goroutine of its own:
// if switching back fails, that goroutine exits with its thread still locked
// and the runtime destroys the thread, so nothing else ever runs in a
// foreign namespace by accident.
func inNetns(name string, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- switchAndRun(name, fn) }()
	return <-done
}

func switchAndRun(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer unix.Close(orig)
	target, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", name, err)
	}
	fnErr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// Stay locked: the thread dies with this goroutine.
		return fmt.Errorf("setns back from %s: %w (fn: %v)", name, err, fnErr)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// nsDialer dials from inside a namespace. It satisfies proxy.Dialer and
// proxy.ContextDialer, so golang.org/x/net/proxy can use it as the forward
// dialer that reaches the SOCKS server from C. Targets must be IP literals:
// name resolution would run on other goroutines, outside the namespace.
type nsDialer struct {
	ns      string
	timeout time.Duration
}

func (d nsDialer) Dial(network, addr string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, addr)
}

func (d nsDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if host, _, err := net.SplitHostPort(addr); err != nil || net.ParseIP(host) == nil {
		return nil, fmt.Errorf("nsDialer: %q is not an IP literal address", addr)
	}
	var c net.Conn
	err := inNetns(d.ns, func() error {
		var err error
		nd := net.Dialer{Timeout: d.timeout}
		c, err = nd.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// listenIn creates a TCP listener inside the namespace.
func listenIn(ns, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := inNetns(ns, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// listenPacketIn creates a UDP socket inside the namespace.
func listenPacketIn(ns, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := inNetns(ns, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}
