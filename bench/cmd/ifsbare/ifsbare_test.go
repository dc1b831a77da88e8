package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// childEnv makes the test binary run as ifsbare itself, so the test
// starts the forwarder inside the proxy namespace without a build.
const childEnv = "IFSBARE_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		if err := run(os.Args[1:]); err != nil {
			os.Stderr.WriteString("ifsbare: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name                               string
		listen, upstream, tcp, udp, socks5 string
		wantErr                            bool
	}{
		{"tcp and udp", "10.0.0.1", "10.0.9.9", "5001,5002", "5003", "", false},
		{"ipv6", "fd00::1", "fd00:9::9", "5001", "", "", false},
		{"no port", "10.0.0.1", "10.0.9.9", "", "", "", true},
		{"port zero", "10.0.0.1", "10.0.9.9", "0", "", "", true},
		{"port too big", "10.0.0.1", "10.0.9.9", "", "65536", "", true},
		{"bad listen", "host", "10.0.9.9", "1", "", "", true},
		{"mixed families", "10.0.0.1", "fd00::9", "1", "", "", true},
		{"socks5", "10.0.0.1", "", "1080", "", "bench:pa:ss", false},
		{"socks5 no port", "10.0.0.1", "", "", "", "bench:pass", true},
		{"socks5 with upstream", "10.0.0.1", "10.0.9.9", "1080", "", "bench:pass", true},
		{"socks5 with udp", "10.0.0.1", "", "1080", "5003", "bench:pass", true},
		{"socks5 no password", "10.0.0.1", "", "1080", "", "bench", true},
		{"socks5 empty user", "10.0.0.1", "", "1080", "", ":pass", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags(tt.listen, tt.upstream, "wan2", tt.tcp, tt.udp, tt.socks5)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v, want error: %v", err, tt.wantErr)
			}
		})
	}
}

// TestForwardsByInterface starts ifsbare in the proxy namespace bound to
// wan2, which is not the proxy's preferred route, and checks that a TCP
// connection and a UDP datagram reach the upstream from wan2's address,
// and that a half-close passes through both ways.
func TestForwardsByInterface(t *testing.T) {
	topo := nstest.NewTopology(t, nstest.TopologyConfig{Prefix: "bb", Net: 236})
	const tcpPort, udpPort = 7001, 7003
	ln := topo.U.Listen(t, "tcp4", topo.ServiceAddr(tcpPort))
	pc := topo.U.ListenPacket(t, "udp4", topo.ServiceAddr(udpPort))
	startForwarder(t, topo, "-listen", topo.ProxyV4(), "-upstream", topo.ServiceV4(), "-interface", "wan2",
		"-tcp", strconv.Itoa(tcpPort), "-udp", strconv.Itoa(udpPort))
	wan2 := netip.MustParseAddr(topo.WANV4(2))

	// TCP: the client half-closes after its request (see checkHalfClose).
	checkHalfClose(t, ln, wan2, func() (net.Conn, error) {
		return topo.C.Dialer(10*time.Second).Dial("tcp4", topo.ProxyAddr(tcpPort))
	})

	// UDP: one datagram to the forwarder, echoed by the upstream.
	cc, err := nstest.ListenPacketIn(topo.C.Name, "udp4", topo.ClientV4()+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	echoed := make(chan error, 1)
	go func() { echoed <- echoOnce(pc, wan2) }()
	fwd, _ := net.ResolveUDPAddr("udp4", topo.ProxyAddr(udpPort))
	if _, err := cc.WriteTo([]byte("datagram"), fwd); err != nil {
		t.Fatal(err)
	}
	cc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	n, from, err := cc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no echo: %v", err)
	}
	if string(buf[:n]) != "datagram" || from.String() != fwd.String() {
		t.Fatalf("echo %q from %v, want %q from %v", buf[:n], from, "datagram", fwd)
	}
	if err := <-echoed; err != nil {
		t.Fatal(err)
	}
}

// checkHalfClose dials with dial and sends a request bigger than a
// segment, then half-closes; the server on ln reads it to EOF (the FIN
// came through), checks the connection comes from src, answers the byte
// count and closes; the client reads the answer to EOF.
func checkHalfClose(t *testing.T, ln net.Listener, src netip.Addr, dial func() (net.Conn, error)) {
	t.Helper()
	served := make(chan error, 1)
	go func() { served <- serveOnce(ln, src) }()
	// A client error shows with the server's, which says why.
	fail := func(what string, err error) {
		t.Helper()
		select {
		case serr := <-served:
			t.Fatalf("%s: %v (server: %v)", what, err, serr)
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: %v", what, err)
		}
	}
	c, err := dial()
	if err != nil {
		fail("dial", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	req := bytes.Repeat([]byte("ifsbare "), 100000) // spliced, not one segment
	if _, err := c.Write(req); err != nil {
		fail("write", err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		fail("half-close", err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		fail("read answer", err)
	}
	if want := strconv.Itoa(len(req)); string(got) != want {
		t.Fatalf("answer %q, want %q (the byte count the server read)", got, want)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

// serveOnce accepts one connection, checks it comes from src, reads it to
// EOF and answers the byte count.
func serveOnce(ln net.Listener, src netip.Addr) error {
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if got := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != src {
		return &wrongSource{got, src}
	}
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return err
	}
	_, err = c.Write([]byte(strconv.FormatInt(n, 10)))
	return err
}

// echoOnce echoes one datagram after checking it comes from src.
func echoOnce(pc net.PacketConn, src netip.Addr) error {
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		return err
	}
	if got := from.(*net.UDPAddr).AddrPort().Addr(); got != src {
		return &wrongSource{got, src}
	}
	_, err = pc.WriteTo(buf[:n], from)
	return err
}

type wrongSource struct{ got, want netip.Addr }

func (e *wrongSource) Error() string {
	return "upstream saw source " + e.got.String() + ", want " + e.want.String() + " (wan2)"
}

// startForwarder runs this test binary as ifsbare in P and waits until
// its first port accepts from C; it is stopped with SIGTERM at the end.
func startForwarder(t *testing.T, topo *nstest.Topology, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := topo.P.Command(ctx, os.Args[0], args...)
	cmd.Env = append(cmd.Env, childEnv+"=1")
	var out nstest.LogBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		waitErr = cmd.Wait()
	}()
	t.Cleanup(func() {
		defer cancel()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			if waitErr != nil && !t.Failed() {
				t.Errorf("ifsbare exit: %v\n%s", waitErr, out.String())
			}
			if t.Failed() {
				t.Log(out.String())
			}
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("ifsbare did not exit on SIGTERM\n%s", out.String())
		}
	})
	// It prints "forwarding" once every socket is open. (A probe
	// connection would be forwarded, and taken by the test's server.)
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(out.String(), "forwarding ") {
		select {
		case <-exited:
			t.Fatalf("ifsbare exited: %v\n%s", waitErr, out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("ifsbare did not start\n%s", out.String())
		}
	}
}
