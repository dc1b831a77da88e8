package nstest_test

import (
	"bufio"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
	"golang.org/x/net/proxy"
)

// The namespace prefix of this package's tests.
const prefix = "h18"

// TestEnterStaysApart: a socket made in a namespace is there and not in
// the test's own namespace, and the thread that entered comes back.
func TestEnterStaysApart(t *testing.T) {
	ns := nstest.New(t, prefix, "enter")
	ns.IP(t, "link", "set", "lo", "up") // local traffic goes by lo
	nstest.Veth(t, ns, "nst0", ns, "nst1")
	if err := ns.AddAddr("nst0", "10.250.7.1/24"); err != nil {
		t.Fatal(err)
	}
	ln := ns.Listen(t, "tcp", "10.250.7.1:0")
	if _, err := net.Listen("tcp", "10.250.7.1:0"); err == nil {
		t.Fatal("10.250.7.1 is usable outside the namespace")
	}
	var inside string
	if err := ns.Do(func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			inside += i.Name + " "
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(inside, "nst0") {
		t.Fatalf("interfaces inside: %q, want nst0", inside)
	}
	if err := nstest.Enter("h18-no-such-namespace", func() error { return nil }); err == nil {
		t.Fatal("Enter into a missing namespace succeeded")
	}
	wantErr := errors.New("from fn")
	if err := ns.Do(func() error { return wantErr }); !errors.Is(err, wantErr) {
		t.Fatalf("Do returned %v, want fn's error", err)
	}
	c, err := ns.Dialer(time.Second).Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// TestStaleNamespacesRemoved: a namespace named for a process that is
// gone is deleted when the prefix is next used.
func TestStaleNamespacesRemoved(t *testing.T) {
	nstest.RequireRoot(t)
	const stalePrefix = "h18stale"
	stale := stalePrefix + "-999999999-1"
	nstest.IP(t, "netns", "add", stale)
	t.Cleanup(func() { nstest.DeleteNamed(stale) })
	nstest.New(t, stalePrefix, "")
	if _, err := os.Stat("/run/netns/" + stale); !os.IsNotExist(err) {
		t.Fatalf("stale namespace %s still there (%v)", stale, err)
	}
}

// TestTopologyDaemon is the package doc's example, run: a user mapped to
// wan2 reaches U from C through a daemon in P, and U sees wan2's address.
func TestTopologyDaemon(t *testing.T) {
	topo := nstest.NewTopology(t, nstest.TopologyConfig{Prefix: prefix, Net: 240})
	bob := nstest.User{Name: "bob", Password: "bob-Pw-h18a", Egress: `interface = "wan2"`}
	cfg := nstest.Config{Listen: []string{topo.ProxyAddr(1080)}, Users: []nstest.User{bob}}
	d := nstest.StartDaemon(t, topo.P, cfg.Render(t))
	d.MustListen(t, topo.C, topo.ProxyAddr(1080))
	ln := topo.U.Listen(t, "tcp", topo.ServiceAddr(8080))

	dialer, err := proxy.SOCKS5("tcp", topo.ProxyAddr(1080), &proxy.Auth{User: bob.Name, Password: bob.Password}, topo.C.Dialer(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	peer := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			peer <- err.Error()
			return
		}
		defer c.Close()
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		c.Write([]byte(host + "\n"))
		peer <- host
	}()
	c, err := dialer.Dial("tcp", topo.ServiceAddr(8080))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close() // the flow's line is written at its end
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(line), topo.WANV4(2); got != want || <-peer != want {
		t.Fatalf("upstream saw %q, want wan2's %s", got, want)
	}
	flow := d.Logs.WaitEntry(t, 0, 10*time.Second, nstest.Msg("flow"))
	if flow["interface"] != "wan2" || flow["user"] != "bob" {
		t.Fatalf("flow line %v, want bob by wan2", flow)
	}
}

// TestConfigRender: the rendered text names what was set, hashes hashed
// users once, and the daemon's password check finds plaintext ones.
func TestConfigRender(t *testing.T) {
	a := nstest.User{Name: "a", Password: "pw-a", Hashed: true, Egress: `interface = "eth1"`}
	b := nstest.User{Name: "b", Password: "pw-b", Interface: "eth2"}
	text := nstest.Config{Listen: []string{"127.0.0.1:1080"}, Server: []string{"auth_fail_limit = 0"}, Users: []nstest.User{a, b}}.Render(t)
	for _, want := range []string{`listen = ["127.0.0.1:1080"]`, "auth_fail_limit = 0", `password_hash = "$2a$04$`, `password = "pw-b"`, `interface = "eth1"`, "name = \"b\"\npassword = \"pw-b\"\ninterface = \"eth2\"\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("config lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "pw-a") {
		t.Errorf("hashed user's password in the text:\n%s", text)
	}
	if h1, h2 := nstest.Hash(t, "pw-a"), nstest.Hash(t, "pw-a"); h1 != h2 {
		t.Error("Hash computed twice for one password")
	}
}
