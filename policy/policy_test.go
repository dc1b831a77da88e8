package policy

import (
	"errors"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/config"
)

// fakeOwn is a controllable replacement for hostAddrs.
type fakeOwn struct {
	mu    sync.Mutex
	addrs []netip.Addr
	err   error
	calls atomic.Int32
}

func (f *fakeOwn) list() ([]netip.Addr, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return append([]netip.Addr(nil), f.addrs...), nil
}

func (f *fakeOwn) set(err error, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
	f.addrs = f.addrs[:0]
	for _, a := range addrs {
		f.addrs = append(f.addrs, netip.MustParseAddr(a))
	}
}

// newPolicy returns a policy whose own-address list comes from the returned
// fake, never from the host.
func newPolicy(tb testing.TB, deny []netip.Prefix, denyOwn bool, own ...string) (*Policy, *fakeOwn) {
	tb.Helper()
	f := &fakeOwn{}
	f.set(nil, own...)
	p := New(deny, denyOwn)
	p.ownAddrs = f.list
	return p, f
}

// expire makes the cached own-address list older than ownRefresh, as if
// time had passed, so the next check lists the addresses again.
func expire(tb testing.TB, p *Policy) {
	tb.Helper()
	cur := p.own.Load()
	if cur == nil {
		tb.Fatal("expire: no cached own-address list yet")
	}
	p.own.Store(&ownSet{addrs: cur.addrs, time: time.Now().Add(-ownRefresh - time.Millisecond)})
}

// checkResult asserts that err is nil when reason is "", else a
// *DeniedError for addr with that reason, unwrapping to ErrDenied and
// naming the reason in its text.
func checkResult(tb testing.TB, addr netip.Addr, err error, reason string) {
	tb.Helper()
	if reason == "" {
		if err != nil {
			tb.Errorf("Check(%s) = %v, want allowed", addr, err)
		}
		return
	}
	if err == nil {
		tb.Errorf("Check(%s) = nil, want denied (%s)", addr, reason)
		return
	}
	if !errors.Is(err, ErrDenied) {
		tb.Errorf("Check(%s) = %v, does not unwrap to ErrDenied", addr, err)
	}
	var de *DeniedError
	if !errors.As(err, &de) {
		tb.Fatalf("Check(%s) = %T %v, want *DeniedError", addr, err, err)
	}
	if de.Reason != reason {
		tb.Errorf("Check(%s).Reason = %q, want %q", addr, de.Reason, reason)
	}
	if de.Addr != addr {
		tb.Errorf("Check(%s).Addr = %s, want the address as given", addr, de.Addr)
	}
	if !strings.Contains(err.Error(), reason) || !strings.Contains(err.Error(), addr.String()) {
		tb.Errorf("Check(%s) error %q does not name the address and %q", addr, err, reason)
	}
	// The message names the setting to change, for the log line an
	// operator reads after a refused first try.
	key := KeyDeny
	if reason == "address of this host" {
		key = KeyDenyOwn
	}
	if de.Key != key || !strings.Contains(err.Error(), key) {
		tb.Errorf("Check(%s) error %q (Key %q) does not name the setting %s", addr, err, de.Key, key)
	}
}

func TestCheckDefaultDeny(t *testing.T) {
	tests := []struct {
		name   string
		addr   string
		reason string // "" means allowed
	}{
		{"ipv4 loopback", "127.0.0.1", "in 127.0.0.0/8"},
		{"ipv4 loopback top", "127.255.255.254", "in 127.0.0.0/8"},
		{"ipv6 loopback", "::1", "in ::1/128"},
		{"ipv4-mapped loopback", "::ffff:127.0.0.1", "in 127.0.0.0/8"},
		{"ipv4-mapped loopback other", "::ffff:127.1.2.3", "in 127.0.0.0/8"},
		{"ipv4 unspecified", "0.0.0.0", "in 0.0.0.0/8"},
		{"this network", "0.1.2.3", "in 0.0.0.0/8"},
		{"ipv4-mapped unspecified", "::ffff:0.0.0.0", "in 0.0.0.0/8"},
		{"ipv6 unspecified", "::", "in ::/128"},
		{"metadata ipv4", "169.254.169.254", "in 169.254.0.0/16"},
		{"ipv4-mapped metadata", "::ffff:169.254.169.254", "in 169.254.0.0/16"},
		{"metadata ipv6", "fd00:ec2::254", "in fd00:ec2::254/128"},
		{"ipv6 link-local", "fe80::1", "in fe80::/10"},
		{"zoned link-local lo", "fe80::1%lo", "in fe80::/10"},
		{"zoned link-local eth0", "fe80::abcd%eth0", "in fe80::/10"},
		{"zoned loopback", "::1%lo", "in ::1/128"},
		{"link-local top of prefix", "febf:ffff::1", "in fe80::/10"},
		{"documentation ipv4", "192.0.2.1", ""},
		{"documentation ipv6", "2001:db8::1", ""},
		{"ipv4-mapped documentation", "::ffff:192.0.2.1", ""},
		{"next to loopback", "128.0.0.1", ""},
		{"next to link-local", "169.255.0.1", ""},
		{"next to metadata ipv6", "fd00:ec2::253", ""},
		{"past link-local", "fec0::1", ""},
	}
	// denyOwn false: only the list is under test here.
	p, f := newPolicy(t, config.DefaultDeny, false)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := netip.MustParseAddr(tt.addr)
			checkResult(t, a, p.Check(a), tt.reason)
		})
	}
	if n := f.calls.Load(); n != 0 {
		t.Errorf("own addresses listed %d times with deny_own_addresses false, want 0", n)
	}
}

func TestCheckEmptyDenyAllowsAll(t *testing.T) {
	p, _ := newPolicy(t, nil, false)
	for _, s := range []string{"127.0.0.1", "::1", "169.254.169.254", "fe80::1%lo", "0.0.0.0"} {
		if err := p.Check(netip.MustParseAddr(s)); err != nil {
			t.Errorf("Check(%s) with no rules = %v, want nil", s, err)
		}
	}
}

func TestCheckOwnAddresses(t *testing.T) {
	own := []string{"192.0.2.2", "2001:db8::2", "fe80::fc:ff:fe00:1%eth0", "::ffff:198.51.100.7"}
	tests := []struct {
		name    string
		denyOwn bool
		addr    string
		reason  string
	}{
		{"own ipv4", true, "192.0.2.2", "address of this host"},
		{"own ipv4 mapped", true, "::ffff:192.0.2.2", "address of this host"},
		{"own ipv6", true, "2001:db8::2", "address of this host"},
		{"own link-local without zone", true, "fe80::fc:ff:fe00:1", "address of this host"},
		{"own link-local other zone", true, "fe80::fc:ff:fe00:1%lo", "address of this host"},
		{"own listed as mapped", true, "198.51.100.7", "address of this host"},
		{"neighbour ipv4", true, "192.0.2.1", ""},
		{"neighbour ipv6", true, "2001:db8::1", ""},
		{"own ipv4 allowed when off", false, "192.0.2.2", ""},
		{"own ipv6 allowed when off", false, "2001:db8::2", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// No deny prefixes, so a refusal can only come from the own list.
			p, f := newPolicy(t, nil, tt.denyOwn, own...)
			a := netip.MustParseAddr(tt.addr)
			checkResult(t, a, p.Check(a), tt.reason)
			if !tt.denyOwn && f.calls.Load() != 0 {
				t.Errorf("own addresses listed %d times with deny_own_addresses false", f.calls.Load())
			}
		})
	}
}

func TestCheckDenyListBeforeOwn(t *testing.T) {
	// An address both in a prefix and own is reported with the prefix.
	p, _ := newPolicy(t, config.DefaultDeny, true, "127.0.0.1")
	a := netip.MustParseAddr("127.0.0.1")
	checkResult(t, a, p.Check(a), "in 127.0.0.0/8")
}

func TestOwnAddressesCached(t *testing.T) {
	p, f := newPolicy(t, nil, true, "192.0.2.2")
	for range 100 {
		if err := p.Check(netip.MustParseAddr("192.0.2.1")); err != nil {
			t.Fatalf("Check(192.0.2.1) = %v", err)
		}
	}
	if n := f.calls.Load(); n != 1 {
		t.Errorf("own addresses listed %d times for 100 checks within ownRefresh, want 1", n)
	}
}

func TestOwnAddressesRefresh(t *testing.T) {
	old := netip.MustParseAddr("192.0.2.2")
	nu := netip.MustParseAddr("192.0.2.3")
	p, f := newPolicy(t, nil, true, old.String())
	checkResult(t, old, p.Check(old), "address of this host")
	checkResult(t, nu, p.Check(nu), "")

	// The host's addresses change; within ownRefresh the cache still holds.
	f.set(nil, nu.String())
	checkResult(t, old, p.Check(old), "address of this host")
	checkResult(t, nu, p.Check(nu), "")

	expire(t, p)
	checkResult(t, nu, p.Check(nu), "address of this host")
	checkResult(t, old, p.Check(old), "")
	if n := f.calls.Load(); n != 2 {
		t.Errorf("own addresses listed %d times, want 2 (first check, after refresh)", n)
	}
}

func TestOwnAddressesListingFails(t *testing.T) {
	errList := errors.New("netlink: boom")
	a := netip.MustParseAddr("192.0.2.1")
	own := netip.MustParseAddr("192.0.2.2")

	t.Run("first listing fails closed", func(t *testing.T) {
		p, f := newPolicy(t, nil, true)
		f.set(errList)
		for range 3 {
			checkResult(t, a, p.Check(a), "address of this host")
		}
		// Not cached as "everything is own": the next check lists again
		// and recovers as soon as listing works.
		f.set(nil, own.String())
		checkResult(t, a, p.Check(a), "")
		checkResult(t, own, p.Check(own), "address of this host")
	})

	t.Run("later failure keeps last list", func(t *testing.T) {
		p, f := newPolicy(t, nil, true, own.String())
		checkResult(t, a, p.Check(a), "")
		f.set(errList)
		expire(t, p)
		checkResult(t, a, p.Check(a), "")
		checkResult(t, own, p.Check(own), "address of this host")
	})

	t.Run("not listed when deny_own_addresses is false", func(t *testing.T) {
		p, f := newPolicy(t, nil, false)
		f.set(errList)
		checkResult(t, a, p.Check(a), "")
		if n := f.calls.Load(); n != 0 {
			t.Errorf("own addresses listed %d times, want 0", n)
		}
	})
}

func TestCheckConcurrent(t *testing.T) {
	p, f := newPolicy(t, config.DefaultDeny, true, "192.0.2.2")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				if i == 0 && j%50 == 0 {
					if cur := p.own.Load(); cur != nil {
						p.own.Store(&ownSet{addrs: cur.addrs})
					}
					f.set(nil, "192.0.2.2")
				}
				if err := p.Check(netip.MustParseAddr("192.0.2.1")); err != nil {
					t.Errorf("Check(192.0.2.1) = %v", err)
					return
				}
				if err := p.Check(netip.MustParseAddr("192.0.2.2")); !errors.Is(err, ErrDenied) {
					t.Errorf("Check(192.0.2.2) = %v, want ErrDenied", err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestHostAddrs uses the real hook: the host's loopback address is one of
// its own, whatever else is configured.
func TestHostAddrs(t *testing.T) {
	addrs, err := hostAddrs()
	if err != nil {
		t.Fatalf("hostAddrs: %v", err)
	}
	lo := netip.MustParseAddr("127.0.0.1")
	if !isOwn(addrs, lo) {
		t.Errorf("hostAddrs() = %v, want 127.0.0.1 (lo) among them", addrs)
	}

	p := New(nil, true) // real ownAddrs; no prefixes
	for _, s := range []string{"127.0.0.1", "::ffff:127.0.0.1"} {
		a := netip.MustParseAddr(s)
		checkResult(t, a, p.Check(a), "address of this host")
	}
	if a := netip.MustParseAddr("192.0.2.1"); !isOwn(addrs, a) {
		checkResult(t, a, p.Check(a), "")
	}

	if err := New(nil, false).Check(lo); err != nil {
		t.Errorf("Check(127.0.0.1) with deny_own_addresses false = %v, want nil", err)
	}
}

func isOwn(addrs []netip.Addr, a netip.Addr) bool {
	for _, x := range addrs {
		if x.Unmap() == a {
			return true
		}
	}
	return false
}
