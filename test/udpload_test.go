//go:build linux

package test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Test 3: 2,000 datagrams of 512 bytes in windows of 50, echoed intact with
// less than 1 % loss; every reply header names the echo server exactly.
func TestUDPBulk(t *testing.T) {
	e, d := getDaemon(t)
	const total, size, window = 2000, 512, 50
	cases := []struct {
		name   string
		u      egressUser
		proxy  string
		server netip.AddrPort
		nic    string
	}{
		{"bob-ipv4", bob, proxyListen4, echoV4, bob.v4},
		{"alice-ipv6", alice, proxyListen6, echoV6, alice.v6},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := udpAssociate(t, e.topo.C, udpOpts{proxy: c.proxy, user: c.u.name, pass: c.u.pass})
			tok := udpToken("bulk")
			payloads := make([][]byte, total)
			for i := range payloads {
				p := make([]byte, size)
				n := copy(p, fmt.Sprintf("%s-%06d-", tok, i))
				_, _ = io.ReadFull(seededStream(uint64(i)), p[n:])
				payloads[i] = p
			}
			// For an IP literal the reply header has the request's layout:
			// RSV, FRAG 0, ATYP 1 or 4, the server's address and port.
			wantHdr := udpPacket(c.server.String(), 0, nil)
			received := make([]bool, total)
			var got, downBytes, bad int
			var out netip.AddrPort // outbound source the echo server saw
			fail := func(format string, args ...any) {
				if bad++; bad <= 5 {
					t.Errorf(format, args...)
				}
				if bad > 50 {
					t.Fatalf("%d bad replies; giving up", bad)
				}
			}
			for w := 0; w < total; w += window {
				for i := w; i < w+window; i++ {
					if err := a.send(c.server.String(), payloads[i]); err != nil {
						t.Fatal(err)
					}
				}
				pending, gotBefore := window, got
				for deadline := time.Now().Add(time.Second); pending > 0 && time.Now().Before(deadline); {
					r, err := a.recv(time.Until(deadline))
					if errors.Is(err, errNoDatagram) {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.HasPrefix(r.raw, wantHdr) {
						fail("reply header % x, want % x", r.raw[:min(len(r.raw), len(wantHdr))], wantHdr)
						continue
					}
					seen, body, err := parseEcho(r.payload)
					seq, _ := strconv.Atoi(strings.TrimPrefix(body[:min(len(body), len(tok)+7)], tok+"-"))
					switch {
					case err != nil:
						fail("%v", err)
					case !strings.HasPrefix(body, tok+"-") || seq < 0 || seq >= total || body != string(payloads[seq]):
						fail("echoed payload %q... is not one we sent", truncate([]byte(body)))
					case received[seq]:
						fail("datagram %d echoed twice", seq)
					case seen.Addr().String() != c.nic || (out.IsValid() && seen != out):
						fail("datagram %d left from %s, want %s from one port (first: %s)", seq, seen, c.nic, out)
					default:
						out = seen
						received[seq] = true
						got++
						downBytes += len(r.payload)
						if seq >= w {
							pending--
						}
					}
				}
				if got == gotBefore {
					t.Fatalf("datagrams %d-%d: no echo within 1 s", w, w+window-1)
				}
			}
			lost := total - got
			t.Logf("%d of %d datagrams echoed (%d lost)", got, total, lost)
			if lost*100 >= total {
				t.Errorf("lost %d of %d datagrams, want < 1 %%", lost, total)
			}
			a.close()
			line := d.waitAssoc(t, 5*time.Second, a.client())
			arrived := len(e.udp.sawToken(tok + "-"))
			if arrived < got {
				t.Errorf("echo server saw %d datagrams, client got %d echoes", arrived, got)
			}
			wantLogFields(t, line, map[string]any{
				"user": c.u.name, "interface": map[string]string{"alice": "wan1", "bob": "wan2"}[c.u.name],
				"dgrams_up": float64(arrived), "bytes_up": float64(arrived * size),
				"dgrams_down": float64(got), "bytes_down": float64(downBytes),
			})
			wantDropped(t, line, nil)
		})
	}
}

// Test 6: 20 associations leave no descriptor behind in the daemon. The
// daemon exposes no goroutine count; every socket it holds is an fd.
func TestUDPNoLeak(t *testing.T) {
	e, d := getDaemon(t)
	pid := d.cmd.Process.Pid
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || filepath.Base(exe) != "ifsocks" {
		t.Fatalf("pid %d is %q (%v), want the ifsocks daemon", pid, exe, err)
	}
	before := stableFDs(t, pid)

	const n = 20
	assocs := make([]*udpAssoc, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			u, proxy := []egressUser{alice, bob}[i%2], []string{proxyListen4, proxyListen6}[i/2%2]
			a, err := udpAssociateRaw(e.topo.C, udpOpts{proxy: proxy, user: u.name, pass: u.pass})
			if err != nil {
				errs[i] = err
				return
			}
			assocs[i] = a
			if a.res.reply != 0 {
				errs[i] = fmt.Errorf("association %d: reply %#x", i, a.res.reply)
				return
			}
			// Both outbound sockets and a name lookup in every association.
			name := net.JoinHostPort(freshName("udp-leak"), strconv.Itoa(udpEchoPort))
			for _, dst := range []string{echoV4.String(), echoV6.String(), name} {
				_, seen, err := a.echo(dst, udpToken("leak"))
				if err == nil && !slices.Contains([]string{u.v4, u.v6}, seen.Addr().String()) {
					err = fmt.Errorf("%s: left from %s, want %s's NIC", dst, seen, u.name)
				}
				if err != nil {
					errs[i] = fmt.Errorf("association %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	closeAll := func() {
		for _, a := range assocs {
			if a != nil {
				a.close()
			}
		}
	}
	defer closeAll()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// Each association holds at least its control connection, relay
	// socket and two outbound sockets; if the count does not show them,
	// it cannot show a leak either.
	if during := len(daemonFDs(t, pid)); during < len(before)+4*n {
		t.Fatalf("daemon has %d fds with %d associations open, %d before; want >= %d", during, n, len(before), len(before)+4*n)
	}
	closeAll()
	for _, a := range assocs {
		d.waitAssoc(t, 10*time.Second, a.client())
	}
	var after map[string]string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if after = daemonFDs(t, pid); len(after) == len(before) || time.Now().After(deadline) {
			break
		}
	}
	if len(after) != len(before) {
		var extra []string
		for fd, target := range after {
			if before[fd] != target {
				extra = append(extra, fd+" -> "+target)
			}
		}
		slices.Sort(extra)
		t.Errorf("daemon has %d fds 10 s after the associations ended, %d before; new: %v", len(after), len(before), extra)
	}
}

// daemonFDs maps the daemon's open fds to their link targets.
func daemonFDs(tb testing.TB, pid int) map[string]string {
	tb.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	fds := make(map[string]string, len(entries))
	for _, de := range entries {
		target, err := os.Readlink(filepath.Join(dir, de.Name()))
		if err == nil { // an fd closed between ReadDir and Readlink is gone
			fds[de.Name()] = target
		}
	}
	return fds
}

// stableFDs waits (bounded) until the daemon's fd count has not changed
// for half a second: connections of earlier tests may still be closing.
func stableFDs(tb testing.TB, pid int) map[string]string {
	tb.Helper()
	fds, same := daemonFDs(tb, pid), 0
	for deadline := time.Now().Add(10 * time.Second); same < 5; {
		if time.Now().After(deadline) {
			tb.Fatalf("daemon fd count did not settle within 10 s (now %d)", len(fds))
		}
		time.Sleep(100 * time.Millisecond)
		next := daemonFDs(tb, pid)
		if len(next) == len(fds) {
			same++
		} else {
			same = 0
		}
		fds = next
	}
	return fds
}
