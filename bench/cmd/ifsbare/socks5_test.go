package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// TestSOCKS5ByInterface starts `ifsbare -socks5` in the proxy namespace
// bound to wan2 (not the preferred route) and drives it from the client
// namespace. First refusals, in raw bytes written here: no acceptable
// method, a wrong user or password (RFC 1929 failure status), BIND, an
// unknown address type, an empty name, a refused connect; after each
// reply the relay must close the connection. Then golang.org/x/net/proxy, an independent
// client, connects with the right credentials to an IPv4, an IPv6 and a
// named target: the upstream must see wan2's address and a half-close
// must pass both ways. The refusals run first so that a refused client
// that was still relayed would be the connection the upstream accepts
// next, and fail the byte count.
func TestSOCKS5ByInterface(t *testing.T) {
	topo := nstest.NewTopology(t, nstest.TopologyConfig{Prefix: "ce", Net: 237, V6: "fd37"})
	const socksPort, echoPort, closedPort = 7080, 7002, 7009
	const user, pass = "bench", "pa:ss-word"
	// The name target resolves from P's /etc/hosts (`ip netns exec`
	// mounts it over /etc/hosts); the namespace's removal deletes it.
	const name = "upstream.ce.test"
	if err := os.WriteFile(filepath.Join(nstest.EtcDir(topo.P.Name), "hosts"), []byte(topo.ServiceV4()+" "+name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln4 := topo.U.Listen(t, "tcp4", topo.ServiceAddr(echoPort))
	ln6 := topo.U.Listen(t, "tcp6", net.JoinHostPort(topo.ServiceV6(), strconv.Itoa(echoPort)))
	startForwarder(t, topo, "-listen", topo.ProxyV4(), "-interface", "wan2",
		"-tcp", strconv.Itoa(socksPort), "-socks5", user+":"+pass)
	proxyAddr := topo.ProxyAddr(socksPort)
	wan2 := netip.MustParseAddr(topo.WANV4(2))
	wan2v6 := netip.MustParseAddr(topo.WANV6(2))
	svc := netip.MustParseAddr(topo.ServiceV4()).As4()

	greet := step{[]byte{5, 1, 2}, 2}
	login := step{authMsg(user, pass), 2}
	request := func(cmd, atyp byte, addr []byte, port uint16) step {
		b := append([]byte{5, cmd, 0, atyp}, addr...)
		return step{binary.BigEndian.AppendUint16(b, port), 10}
	}
	refusals := []struct {
		name  string
		steps []step
		want  []byte // the start of the last reply
	}{
		{"no acceptable method", []step{{[]byte{5, 2, 0, 1}, 2}}, []byte{5, 0xFF}},
		{"wrong password", []step{greet, {authMsg(user, pass+"x"), 2}}, []byte{1, 1}},
		{"wrong user", []step{greet, {authMsg("Bench", pass), 2}}, []byte{1, 1}},
		{"empty password", []step{greet, {authMsg(user, ""), 2}}, []byte{1, 1}},
		{"BIND", []step{greet, login, request(2, 1, svc[:], echoPort)}, []byte{5, 7}},
		{"UDP ASSOCIATE", []step{greet, login, request(3, 1, svc[:], echoPort)}, []byte{5, 7}},
		{"address type 5", []step{greet, login, request(1, 5, svc[:], echoPort)}, []byte{5, 8}},
		{"empty name", []step{greet, login, request(1, 3, []byte{0}, echoPort)}, []byte{5, 4}},
		{"refused", []step{greet, login, request(1, 1, svc[:], closedPort)}, []byte{5, 5}},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, topo, proxyAddr)
			last := exchange(t, c, tt.steps)
			if !bytes.HasPrefix(last, tt.want) {
				t.Fatalf("last reply % x, want it to start % x", last, tt.want)
			}
			if n, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Fatalf("after the refusal: read %d bytes, %v; want the connection closed (EOF)", n, err)
			}
		})
	}

	// The reply names the upstream socket (wan2's address), and bytes
	// sent with the request, before the reply, reach the upstream.
	t.Run("bound address and early data", func(t *testing.T) {
		served := make(chan error, 1)
		go func() { served <- serveOnce(ln4, wan2) }()
		c := dialRaw(t, topo, proxyAddr)
		exchange(t, c, []step{greet, login})
		req := request(1, 1, svc[:], echoPort).msg
		if _, err := c.Write(append(req, "early"...)); err != nil {
			t.Fatal(err)
		}
		rep := make([]byte, 10)
		if _, err := io.ReadFull(c, rep); err != nil {
			t.Fatalf("reply: %v (server: %v)", err, <-served)
		}
		bnd := netip.AddrFrom4([4]byte(rep[4:8]))
		if !bytes.Equal(rep[:4], []byte{5, 0, 0, 1}) || bnd != wan2 || binary.BigEndian.Uint16(rep[8:]) == 0 {
			t.Fatalf("reply % x, want success with BND %s and a port", rep, wan2)
		}
		c.(*net.TCPConn).CloseWrite()
		if got, err := io.ReadAll(c); err != nil || string(got) != "5" {
			t.Fatalf("answer %q, %v; want \"5\" (the server read the early bytes)", got, err)
		}
		if err := <-served; err != nil {
			t.Fatal(err)
		}
	})

	d, err := proxy.SOCKS5("tcp", proxyAddr, &proxy.Auth{User: user, Password: pass}, topo.C.Dialer(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("x/net/proxy wrong password", func(t *testing.T) {
		bad, err := proxy.SOCKS5("tcp", proxyAddr, &proxy.Auth{User: user, Password: "wrong"}, topo.C.Dialer(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if c, err := bad.Dial("tcp", topo.ServiceAddr(echoPort)); err == nil {
			c.Close()
			t.Fatal("a wrong password was let through")
		}
	})
	for _, tt := range []struct {
		name, target string
		ln           net.Listener
		src          netip.Addr
	}{
		{"x/net/proxy IPv4", topo.ServiceAddr(echoPort), ln4, wan2},
		{"x/net/proxy IPv6", net.JoinHostPort(topo.ServiceV6(), strconv.Itoa(echoPort)), ln6, wan2v6},
		{"x/net/proxy name", net.JoinHostPort(name, strconv.Itoa(echoPort)), ln4, wan2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// proxy.Dialer's Dial gives the client's own *net.TCPConn
			// (DialContext would wrap it), so it can half-close.
			checkHalfClose(t, tt.ln, tt.src, func() (net.Conn, error) { return d.Dial("tcp", tt.target) })
		})
	}
}

// step is one client message and the length of the reply it gets.
type step struct {
	msg   []byte
	reply int
}

// authMsg is an RFC 1929 username/password request.
func authMsg(user, pass string) []byte {
	b := append([]byte{1, byte(len(user))}, user...)
	b = append(b, byte(len(pass)))
	return append(b, pass...)
}

// dialRaw connects to the relay from C, closed at the end of the test.
func dialRaw(t *testing.T, topo *nstest.Topology, addr string) net.Conn {
	t.Helper()
	c, err := topo.C.Dialer(10*time.Second).Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

// exchange sends each step's message and reads its reply, one at a time
// as an ordinary client does; it returns the last reply.
func exchange(t *testing.T, c net.Conn, steps []step) []byte {
	t.Helper()
	var rep []byte
	for i, s := range steps {
		if _, err := c.Write(s.msg); err != nil {
			t.Fatalf("step %d: write: %v", i, err)
		}
		rep = make([]byte, s.reply)
		if _, err := io.ReadFull(c, rep); err != nil {
			t.Fatalf("step %d: read reply: %v", i, err)
		}
	}
	return rep
}

// FuzzHandshake feeds any bytes to the login and the request parser: no
// panic, a login passes only with the right credentials in the input,
// and an accepted request names an address or a name.
func FuzzHandshake(f *testing.F) {
	const user, pass = "bench", "pass"
	ok := append([]byte{5, 1, 2}, authMsg(user, pass)...)
	for _, req := range [][]byte{
		{5, 1, 0, 1, 10, 0, 0, 1, 0, 80},
		append([]byte{5, 1, 0, 4}, append(make([]byte, 16), 1, 187)...),
		append([]byte{5, 1, 0, 3, 4}, "host\x00\x50"...),
		{5, 1, 0, 3, 0, 0, 80},
		{5, 2, 0, 1, 10, 0, 0, 1, 0, 80},
		{5, 1, 0, 9},
	} {
		f.Add(append(append([]byte{}, ok...), req...))
	}
	f.Add(append([]byte{5, 1, 2}, authMsg(user, "wrong")...))
	f.Add([]byte{5, 1, 0})
	f.Add([]byte{4, 1, 0, 80, 10, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		fw := &forwarder{creds: &credentials{user: []byte(user), pass: []byte(pass)}}
		r := bufio.NewReaderSize(bytes.NewReader(data), handshakeBuf)
		if !fw.login(r, io.Discard) {
			return
		}
		if !bytes.Contains(data, authMsg(user, pass)) {
			t.Fatalf("login passed without the credentials: % x", data)
		}
		ip, name, _, code := readRequest(r)
		if code == repOK && !ip.IsValid() && name == "" {
			t.Fatalf("request accepted with no destination: % x", data)
		}
	})
}
