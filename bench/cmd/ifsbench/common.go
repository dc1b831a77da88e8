package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Record is one line of a run's results file. Kind "result" carries the
// figures of one test of one subject; "meta" and "strace" carry the
// environment and attachments for the report.
type Record struct {
	Kind    string             `json:"kind"`
	Subject string             `json:"subject,omitempty"`
	Test    string             `json:"test,omitempty"`
	Values  map[string]float64 `json:"values,omitempty"`
	// CPU is the CPU time in seconds each watched role used during the
	// test: "client" is this process, "host" the whole machine's busy
	// time (it alone sees kernel forwarding, which runs in softirq).
	CPU    map[string]float64 `json:"cpu,omitempty"`
	Series []float64          `json:"series,omitempty"`
	// Run is the repeat a result comes from (run.sh --repeat): 1, 2, ...
	// Records of older runs have none (0), read as 1.
	Run  int    `json:"run,omitempty"`
	Key  string `json:"key,omitempty"`
	Text string `json:"text,omitempty"`
}

// emit prints r as the result of e's subject and repeat.
func (e *endpoint) emit(r Record) error {
	r.Kind = "result"
	r.Subject = e.subject
	r.Run = e.run
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Printf("%s\n", b)
	return err
}

// endpoint is what every load subcommand shares: where to go, whether
// through a proxy, and which processes to charge CPU time to.
type endpoint struct {
	subject string
	test    string // overrides the test name in the record
	proxy   string // "" connects directly (kernel forwarding baseline)
	forward string // a port forwarder's IP: connect to it, no proxy protocol
	run     int    // which repeat of the test this is (run.sh --repeat)
	proto   string // how to ask the proxy for a tunnel: socks5 or http
	user    string
	pass    string
	target  string
	cpu     string // role=pid,... (each pid with its descendants)
	timeout time.Duration

	targetAP  netip.AddrPort
	forwardAP netip.AddrPort // forward at the target's port
	watch     []watched
}

func (e *endpoint) register(fs *flag.FlagSet, defPort int) {
	fs.StringVar(&e.subject, "subject", "", "label of the system under test (kernel, ifsocks, ...)")
	fs.StringVar(&e.test, "test", "", "name of the test in the record (default: from the subcommand)")
	fs.StringVar(&e.proxy, "proxy", "", "SOCKS5 proxy IP:port; empty connects to the target directly")
	fs.StringVar(&e.forward, "forward", "", "IP of a port forwarder (the bare subject): connect to it at the target's port, with no proxy protocol")
	fs.IntVar(&e.run, "run", 1, "the repeat this measurement is, recorded with it")
	fs.StringVar(&e.proto, "proxy-proto", "socks5", "socks5, or http (CONNECT with Basic proxy credentials; TCP tests only)")
	fs.StringVar(&e.user, "user", "", "RFC 1929 username; empty offers no authentication")
	fs.StringVar(&e.pass, "pass", "", "RFC 1929 password")
	fs.StringVar(&e.target, "target", "10.233.9.9:"+strconv.Itoa(defPort), "upstream server IP:port")
	fs.StringVar(&e.cpu, "cpu", "", "processes to charge CPU time to: role=pid,role=pid")
	fs.DurationVar(&e.timeout, "timeout", 10*time.Second, "limit for one handshake or connection")
}

// testName is the name the record gets: -test, or def.
func (e *endpoint) testName(def string) string {
	if e.test != "" {
		return e.test
	}
	return def
}

// parse validates the flags once fs.Parse has run.
func (e *endpoint) parse() error {
	ap, err := netip.ParseAddrPort(e.target)
	if err != nil || ap.Addr().Zone() != "" {
		return fmt.Errorf("-target %q: want IP:port (IPv6 in brackets)", e.target)
	}
	e.targetAP = ap
	if e.forward != "" {
		ip, err := netip.ParseAddr(e.forward)
		if err != nil || ip.Zone() != "" || e.proxy != "" {
			return fmt.Errorf("-forward %q: want an IP address, and no -proxy", e.forward)
		}
		e.forwardAP = netip.AddrPortFrom(ip, ap.Port())
	}
	if e.run < 1 {
		return fmt.Errorf("-run %d: want 1 or more", e.run)
	}
	if e.proto != "socks5" && e.proto != "http" {
		return fmt.Errorf("-proxy-proto %q: want socks5 or http", e.proto)
	}
	if e.cpu == "" {
		return nil
	}
	for _, kv := range strings.Split(e.cpu, ",") {
		role, p, ok := strings.Cut(kv, "=")
		pid, err := strconv.Atoi(p)
		if !ok || err != nil || pid <= 0 {
			return fmt.Errorf("-cpu %q: want role=pid", kv)
		}
		e.watch = append(e.watch, watched{role: role, pid: pid})
	}
	return nil
}

// open returns a connection to the target: through the proxy with
// CONNECT, through the forwarder, or directly.
func (e *endpoint) open(ctx context.Context) (*net.TCPConn, error) {
	if e.forward != "" {
		return dialTCP(ctx, e.forwardAP.String())
	}
	if e.proxy == "" {
		return dialTCP(ctx, e.target)
	}
	c, err := dialTCP(ctx, e.proxy)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(e.timeout))
	if e.proto == "http" {
		err = httpConnect(c, e.user, e.pass, e.targetAP)
	} else {
		_, err = handshake(c, e.user, e.pass, cmdConnect, e.targetAP)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// dialTCP connects to addr, an IP literal and port of either family.
func dialTCP(ctx context.Context, addr string) (*net.TCPConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// raiseNoFile lifts RLIMIT_NOFILE towards n, as far as this process may
// (the hard limit, unless it has CAP_SYS_RESOURCE), and returns the soft
// limit in force: ten thousand tunnels need more descriptors than the
// usual default.
func raiseNoFile(n uint64) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur >= n {
		return lim.Cur
	}
	want := syscall.Rlimit{Cur: n, Max: max(n, lim.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
		return n
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	return lim.Cur
}

// untilSignal is a context that ends on SIGINT/SIGTERM or after limit.
func untilSignal(limit time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		defer signal.Stop(ch)
		select {
		case <-ch:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
