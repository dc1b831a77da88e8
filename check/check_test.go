package check

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/ifsocks/ifsocks/config"
)

// fakeHost is a host described by values. The zero rp_filter, mode and
// nonlocal_bind values are the healthy ones.
type fakeHost struct {
	links      map[string]*link
	linkErr    error // returned for every name not in links, instead of errNoLink
	rpAll      int
	rp         map[string]int
	rpErr      error
	local      []netip.Prefix
	localErr   error
	nonlocal6  bool
	nonlocal4  bool
	servers    []netip.Addr
	serversErr error
	mode       fs.FileMode
	modeErr    error
}

func (f *fakeHost) link(name string) (*link, error) {
	if l, ok := f.links[name]; ok {
		return l, nil
	}
	if f.linkErr != nil {
		return nil, f.linkErr
	}
	return nil, fmt.Errorf("interface %q: %w", name, errNoLink)
}

func (f *fakeHost) rpFilter(name string) (int, int, error) { return f.rpAll, f.rp[name], f.rpErr }

func (f *fakeHost) isLocal(ip netip.Addr) (bool, error) {
	if f.localErr != nil {
		return false, f.localErr
	}
	return slices.ContainsFunc(f.local, func(p netip.Prefix) bool { return p.Contains(ip) }), nil
}

func (f *fakeHost) nonlocalBind(ipv6 bool) (bool, error) {
	if ipv6 {
		return f.nonlocal6, nil
	}
	return f.nonlocal4, nil
}

func (f *fakeHost) owner(ip netip.Addr) (string, error) {
	for name, l := range f.links {
		for _, a := range l.addrs {
			if a.prefix.Addr() == ip {
				return name, nil
			}
		}
	}
	return "", nil
}

func (f *fakeHost) nameservers() ([]netip.Addr, error) { return f.servers, f.serversErr }

func (f *fakeHost) fileMode(string) (fs.FileMode, error) { return f.mode, f.modeErr }

// healthyHost has eth1 and eth2 up, each with IPv4 and IPv6 addresses and
// default routes in the main table, a nameserver off loopback and a
// config file only its owner can read.
func healthyHost() *fakeHost {
	return &fakeHost{
		links: map[string]*link{
			"eth1": healthyLink("eth1", "10.0.1.5/24", "2001:db8:1::5/64", "fe80::1/64"),
			"eth2": healthyLink("eth2", "10.0.2.5/24", "2001:db8:2::5/64", "fe80::2/64"),
		},
		local: []netip.Prefix{
			netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"),
			netip.MustParsePrefix("10.0.1.5/32"), netip.MustParsePrefix("2001:db8:1::5/128"),
			netip.MustParsePrefix("10.0.2.5/32"), netip.MustParsePrefix("2001:db8:2::5/128"),
		},
		servers: []netip.Addr{netip.MustParseAddr("10.0.1.1")},
		mode:    0o600,
	}
}

func healthyLink(name string, prefixes ...string) *link {
	l := &link{name: name, up: true, running: true, default4: []int{mainTable}, default6: []int{mainTable}}
	for _, p := range prefixes {
		l.addrs = append(l.addrs, addr{prefix: netip.MustParsePrefix(p)})
	}
	return l
}

// hash is a valid bcrypt hash (of "alice-password", from config.toml.example).
const hash = "$2a$10$Fyrgz6pVbgG.41YisShyMujbLLYt.wED9T3zvxdZ79RIlQUqYL7la"

const alice = "[[users]]\nname = \"alice\"\npassword_hash = \"" + hash + "\"\ninterface = \"eth1\"\n"

func user(name, iface string) string {
	s := fmt.Sprintf("[[users]]\nname = %q\npassword_hash = %q\n", name, hash)
	if iface != "" {
		s += fmt.Sprintf("interface = %q\n", iface)
	}
	return s
}

func parse(tb testing.TB, text string) *config.Config {
	tb.Helper()
	cfg, err := config.Parse([]byte(text), "test.toml")
	if err != nil {
		tb.Fatalf("config.Parse: %v\n%s", err, text)
	}
	return cfg
}

type checkCase struct {
	name   string
	config string
	host   func(*fakeHost)
	// wantErrors and wantWarnings hold one substring per expected finding,
	// matched against "subject: text"; the counts must match exactly.
	wantErrors, wantWarnings []string
	// wantRows, when set, is the whole table: user, interface, state,
	// IPv4, IPv6, default4, default6, notes ("; "-joined).
	wantRows [][]string
}

var checkCases = []checkCase{
	{
		name:     "healthy",
		config:   alice,
		wantRows: [][]string{{"alice", "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "yes", "yes", ""}},
	},
	{
		name:       "missing interface",
		config:     user("dave", "eth9"),
		wantErrors: []string{"interface eth9 (users[0] dave): no such interface: the daemon starts, but the flows of dave get reply 0x03"},
		wantRows:   [][]string{{"dave", "eth9", "missing", "-", "-", "-", "-", "no such interface"}},
	},
	{
		name:       "interface unreadable",
		config:     user("dave", "eth9"),
		host:       func(h *fakeHost) { h.linkErr = errors.New("netlink: permission denied") },
		wantErrors: []string{"interface eth9 (users[0] dave): cannot inspect: netlink: permission denied"},
		wantRows:   [][]string{{"dave", "eth9", "?", "-", "-", "-", "-", "cannot inspect"}},
	},
	{
		name:   "users sharing a missing interface get one error",
		config: user("dave", "eth9") + user("erin", "eth9"),
		wantErrors: []string{
			"interface eth9 (users[0] dave, users[1] erin): no such interface: the daemon starts, but the flows of dave, erin get reply 0x03",
		},
	},
	{
		name:   "listen on a foreign address",
		config: "[server]\nlisten = [\"127.0.0.1:1080\", \"192.0.2.7:1080\", \"[2001:db8:9::1]:1080\"]\n" + alice,
		wantErrors: []string{
			`server.listen[1] "192.0.2.7:1080": 192.0.2.7 is not an address of this host: the daemon cannot listen there and will not start`,
			`server.listen[2] "[2001:db8:9::1]:1080": 2001:db8:9::1 is not an address of this host`,
		},
	},
	{
		name:   "listen on own, loopback and wildcard addresses",
		config: "[server]\nlisten = [\"10.0.1.5:1080\", \"[2001:db8:2::5]:1080\", \"127.0.0.9:1081\", \"0.0.0.0:1082\", \"[::]:1083\", \":1084\", \"[::ffff:10.0.2.5]:1085\"]\n" + alice,
	},
	{
		name:         "listen on a foreign address with ip_nonlocal_bind",
		config:       "[server]\nlisten = [\"192.0.2.7:1080\"]\n" + alice,
		host:         func(h *fakeHost) { h.nonlocal4 = true },
		wantWarnings: []string{`server.listen[0] "192.0.2.7:1080": 192.0.2.7 is not an address of this host; net.ipv4.ip_nonlocal_bind=1 lets the daemon listen there anyway`},
	},
	{
		name:       "ipv4 ip_nonlocal_bind does not cover ipv6",
		config:     "[server]\nlisten = [\"[2001:db8:9::1]:1080\"]\n" + alice,
		host:       func(h *fakeHost) { h.nonlocal4 = true },
		wantErrors: []string{`server.listen[0] "[2001:db8:9::1]:1080": 2001:db8:9::1 is not an address of this host`},
	},
	{
		name:       "metrics on a foreign address",
		config:     "[metrics]\nlisten = \"192.0.2.8:9810\"\n" + alice,
		wantErrors: []string{`metrics.listen "192.0.2.8:9810": 192.0.2.8 is not an address of this host: the metrics endpoint cannot listen there`},
	},
	{
		name:       "local addresses unreadable",
		config:     alice,
		host:       func(h *fakeHost) { h.localErr = errors.New("netlink: boom") },
		wantErrors: []string{`server.listen[0] "127.0.0.1:1080": cannot tell whether 127.0.0.1 is an address of this host: netlink: boom`},
	},
	{
		name:         "plaintext password",
		config:       "[[users]]\nname = \"bob\"\npassword = \"bob-pw\"\ninterface = \"eth2\"\n",
		wantWarnings: []string{"users[0] bob: plaintext password in the file: replace it with password_hash (make one with: ifsocks hash-password)"},
		wantRows:     [][]string{{"bob", "eth2", "up", "10.0.2.5/24", "2001:db8:2::5/64", "yes", "yes", "plaintext password"}},
	},
	{
		name:         "mixed bcrypt costs",
		config:       alice + "[[users]]\nname = \"carol\"\npassword_hash = \"$2a$04$fOw3dOqfA/vSHXlFNs7rg.4LlXdWWZmqsq/L69ZjMdaREIhT5ZSzC\"\ninterface = \"eth1\"\n",
		wantWarnings: []string{"users: bcrypt costs differ (4 to 10): every failed login costs as much as cost 10"},
		wantRows: [][]string{{"alice", "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "yes", "yes", ""},
			{"carol", "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "yes", "yes", ""}},
	},
	{
		name:         "world-readable file with hashes",
		config:       alice,
		host:         func(h *fakeHost) { h.mode = 0o644 },
		wantWarnings: []string{"test.toml: mode 0644: readable by others, and it holds passwords or password hashes"},
	},
	{
		name:   "world-readable file without users",
		config: "[server]\nlisten = [\"127.0.0.1:1080\"]\n",
		host:   func(h *fakeHost) { h.mode = 0o644 },
	},
	{
		name:   "group-readable file",
		config: alice,
		host:   func(h *fakeHost) { h.mode = 0o640 },
	},
	{
		name:         "group-writable file",
		config:       alice,
		host:         func(h *fakeHost) { h.mode = 0o660 },
		wantWarnings: []string{"test.toml: mode 0660: writable by group or others, who could add users or change where the daemon listens; chmod go-w"},
	},
	{
		name:   "world-writable and readable file",
		config: alice,
		host:   func(h *fakeHost) { h.mode = 0o666 },
		wantWarnings: []string{
			"test.toml: mode 0666: readable by others",
			"test.toml: mode 0666: writable by group or others",
		},
	},
	{
		name:         "file mode unreadable",
		config:       alice,
		host:         func(h *fakeHost) { h.modeErr = fs.ErrPermission },
		wantWarnings: []string{"test.toml: cannot read the file mode: permission denied"},
	},
	{
		name:         "strict rp_filter from conf.all",
		config:       alice,
		host:         func(h *fakeHost) { h.rpAll = 1 },
		wantWarnings: []string{"interface eth1 (users[0] alice): strict reverse-path filtering, rp_filter=1 (the larger of net.ipv4.conf.all.rp_filter=1 and net.ipv4.conf.eth1.rp_filter=0): with SO_BINDTODEVICE on a host with several NICs, a reply arriving on eth1 is dropped when the main table's route back to its sender goes via another NIC, so the flows of alice time out; use loose mode: sysctl -w net.ipv4.conf.eth1.rp_filter=2"},
		wantRows:     [][]string{{"alice", "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "yes", "yes", "rp_filter=1 (strict)"}},
	},
	{
		name:         "strict rp_filter on the interface",
		config:       alice,
		host:         func(h *fakeHost) { h.rp = map[string]int{"eth1": 1} },
		wantWarnings: []string{"interface eth1 (users[0] alice): strict reverse-path filtering, rp_filter=1 (the larger of net.ipv4.conf.all.rp_filter=0 and net.ipv4.conf.eth1.rp_filter=1)"},
	},
	{
		name:   "loose rp_filter on the interface wins over strict conf.all",
		config: alice,
		host:   func(h *fakeHost) { h.rpAll = 1; h.rp = map[string]int{"eth1": 2} },
	},
	{
		name:   "loose conf.all wins over strict interface",
		config: alice,
		host:   func(h *fakeHost) { h.rpAll = 2; h.rp = map[string]int{"eth1": 1} },
	},
	{
		name:   "strict rp_filter on a VLAN interface names the sysctl with a slash",
		config: user("alice", "eth1.100"),
		host: func(h *fakeHost) {
			h.links["eth1.100"] = healthyLink("eth1.100", "10.0.3.5/24")
			h.rp = map[string]int{"eth1.100": 1}
		},
		wantWarnings: []string{"and net.ipv4.conf.eth1/100.rp_filter=1): with SO_BINDTODEVICE on a host with several NICs, a reply arriving on eth1.100 is dropped when the main table's route back to its sender goes via another NIC, so the flows of alice time out; use loose mode: sysctl -w net.ipv4.conf.eth1/100.rp_filter=2"},
	},
	{
		name:         "rp_filter unreadable",
		config:       alice,
		host:         func(h *fakeHost) { h.rpErr = fs.ErrNotExist },
		wantWarnings: []string{"interface eth1 (users[0] alice): cannot read rp_filter: file does not exist"},
	},
	{
		name:   "users sharing a strict interface get one warning",
		config: user("alice", "eth1") + user("carol", "eth1"),
		host:   func(h *fakeHost) { h.rpAll = 1 },
		wantWarnings: []string{
			"interface eth1 (users[0] alice, users[1] carol): strict reverse-path filtering",
		},
		wantRows: [][]string{
			{"alice", "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "yes", "yes", "rp_filter=1 (strict)"},
			{"carol", "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "yes", "yes", "rp_filter=1 (strict)"},
		},
	},
	{
		name:   "administratively down, routes gone",
		config: alice,
		host: func(h *fakeHost) {
			l := h.links["eth1"]
			l.up, l.running, l.default4, l.default6 = false, false, nil, nil
		},
		wantWarnings: []string{"interface eth1 (users[0] alice): down, administratively down (ip link set eth1 up): the flows of alice get reply 0x03 until it is up"},
		wantRows:     [][]string{{"alice", "eth1", "down", "10.0.1.5/24", "2001:db8:1::5/64", "no", "no", "admin down"}},
	},
	{
		name:         "no carrier",
		config:       alice,
		host:         func(h *fakeHost) { h.links["eth1"].running = false },
		wantWarnings: []string{"interface eth1 (users[0] alice): down, no carrier (cable, peer or driver): the flows of alice get reply 0x03 until it is up"},
		wantRows:     [][]string{{"alice", "eth1", "down", "10.0.1.5/24", "2001:db8:1::5/64", "yes", "yes", "no carrier"}},
	},
	{
		name:   "no default route",
		config: alice,
		host: func(h *fakeHost) {
			l := h.links["eth1"]
			l.default4, l.default6 = nil, nil
		},
		wantWarnings: []string{"interface eth1 (users[0] alice): no default route out of it, IPv4 or IPv6, in any routing table: unless a more specific route via eth1 covers the target, the flows of alice fail, IPv4 after ~3 s with reply 0x04"},
		wantRows:     [][]string{{"alice", "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "no", "no", "no default route"}},
	},
	{
		name:         "no IPv4 default route",
		config:       alice,
		host:         func(h *fakeHost) { h.links["eth1"].default4 = nil },
		wantWarnings: []string{"interface eth1 (users[0] alice): no IPv4 default route out of it in any routing table: unless a more specific route via eth1 covers the target, the IPv4 flows of alice fail after ~3 s with reply 0x04"},
		wantRows:     [][]string{{"alice", "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "no", "yes", "no IPv4 default route"}},
	},
	{
		name:         "no IPv6 default route with a global IPv6 address",
		config:       alice,
		host:         func(h *fakeHost) { h.links["eth1"].default6 = nil },
		wantWarnings: []string{"interface eth1 (users[0] alice): no IPv6 default route out of it in any routing table, though it has a global IPv6 address: unless a more specific route via eth1 covers the target, the IPv6 flows of alice get reply 0x03 at once"},
	},
	{
		name:   "IPv4-only interface needs no IPv6 default route",
		config: alice,
		host: func(h *fakeHost) {
			h.links["eth1"] = healthyLink("eth1", "10.0.1.5/24", "fe80::1/64")
			h.links["eth1"].default6 = nil
		},
		wantRows: [][]string{{"alice", "eth1", "up", "10.0.1.5/24", "-", "yes", "no", ""}},
	},
	{
		name:   "IPv6-only interface needs no IPv4 default route",
		config: alice,
		host: func(h *fakeHost) {
			h.links["eth1"] = healthyLink("eth1", "2001:db8:1::5/64")
			h.links["eth1"].default4 = nil
		},
	},
	{
		name:   "default routes only in other tables",
		config: alice,
		host: func(h *fakeHost) {
			l := h.links["eth1"]
			l.default4, l.default6 = []int{100}, []int{100, 200}
		},
		wantRows: [][]string{{"alice", "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "yes", "yes",
			"IPv4 default only in table 100 (needs an ip rule); IPv6 default only in tables 100, 200 (needs an ip rule)"}},
	},
	{
		name:   "address flags and several addresses",
		config: alice,
		host: func(h *fakeHost) {
			l := healthyLink("eth1", "10.0.1.5/24", "10.0.1.6/32")
			l.addrs = append(l.addrs, addr{netip.MustParsePrefix("2001:db8:1::5/64"), "tentative"}, addr{netip.MustParsePrefix("fd00:1::5/64"), "dadfailed"})
			h.links["eth1"] = l
		},
		wantRows: [][]string{{"alice", "eth1", "up", "10.0.1.5/24, 10.0.1.6/32", "2001:db8:1::5/64 (tentative), fd00:1::5/64 (dadfailed)", "yes", "yes", ""}},
	},
	{
		name:   "kernel routing user",
		config: user("eve", ""),
		host: func(h *fakeHost) {
			h.servers = []netip.Addr{netip.MustParseAddr("127.0.0.53")} // not used by eve's lookups
		},
		wantRows: [][]string{{"eve", "-", "-", "-", "-", "-", "-", "kernel routing"}},
	},
	{
		name:     "odd user name is quoted",
		config:   user("a b\tc", "eth1"),
		wantRows: [][]string{{`"a b\tc"`, "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "yes", "yes", ""}},
	},
	{
		name:   "many users on one interface are named up to five",
		config: user("u0", "eth1") + user("u1", "eth1") + user("u2", "eth1") + user("u3", "eth1") + user("u4", "eth1") + user("u5", "eth1") + user("u6", "eth1"),
		host:   func(h *fakeHost) { h.rpAll = 1; h.servers = nil },
		wantWarnings: []string{
			"interface eth1 (users[0] u0, users[1] u1, users[2] u2, users[3] u3, users[4] u4 and 2 more): strict reverse-path filtering, rp_filter=1 (the larger of net.ipv4.conf.all.rp_filter=1 and net.ipv4.conf.eth1.rp_filter=0): with SO_BINDTODEVICE on a host with several NICs, a reply arriving on eth1 is dropped when the main table's route back to its sender goes via another NIC, so the flows of u0, u1, u2, u3, u4 and 2 more time out",
			"users with an interface (u0, u1, u2, u3, u4 and 2 more)",
		},
	},
	{
		name:   "systemd-resolved stub",
		config: user("alice", "eth1") + user("bob", "eth2") + user("eve", ""),
		host:   func(h *fakeHost) { h.servers = []netip.Addr{netip.MustParseAddr("127.0.0.53")} },
		wantWarnings: []string{
			"/etc/resolv.conf: nameserver 127.0.0.53 on loopback (127.0.0.53 is the systemd-resolved stub: /run/systemd/resolve/resolv.conf lists the real nameservers): the DNS queries of users with an interface (alice, bob) are sent from sockets bound to that interface and cannot reach it, so their name lookups time out and their flows get reply 0x04 (after connect_timeout at most)",
		},
	},
	{
		name:         "loopback nameserver before a reachable one",
		config:       alice,
		host:         func(h *fakeHost) { h.servers = netipAddrs("::1", "10.0.1.1") },
		wantWarnings: []string{"/etc/resolv.conf: nameserver ::1 on loopback: the DNS queries of users with an interface (alice) are sent from sockets bound to that interface and cannot reach it, so their lookups wait for the resolver timeout on it before trying the next nameserver"},
	},
	{
		name:         "no nameserver",
		config:       alice,
		host:         func(h *fakeHost) { h.servers = nil },
		wantWarnings: []string{"/etc/resolv.conf: no nameserver listed: Go's resolver then asks 127.0.0.1 and ::1, which the DNS queries of users with an interface (alice) cannot reach"},
	},
	{
		name:         "resolv.conf unreadable",
		config:       alice,
		host:         func(h *fakeHost) { h.serversErr = fs.ErrPermission },
		wantWarnings: []string{"/etc/resolv.conf: cannot read the nameservers: permission denied"},
	},
	{
		name:   "open proxy on loopback",
		config: "[server]\nallow_open = true\n",
		wantWarnings: []string{
			"server.allow_open: true and no [[users]]: every local user and process can use this proxy without authentication",
		},
	},
	{
		name:   "open proxy on the network",
		config: "[server]\nlisten = [\"127.0.0.1:1080\", \"0.0.0.0:1080\"]\nallow_open = true\n",
		wantWarnings: []string{
			"server.allow_open: true and no [[users]]: anyone who can reach 0.0.0.0:1080 can use this proxy without authentication",
		},
	},
	{
		name:   "no idle timeout and no keepalive",
		config: "[server]\nidle_timeout = \"0s\"\n" + alice,
		wantWarnings: []string{
			`server.idle_timeout: "0s" with tcp_keepalive off: a flow whose client or target vanished without a FIN or RST stays open`,
		},
	},
	{
		name:   "no idle timeout, keepalive on",
		config: "[server]\nidle_timeout = \"0s\"\ntcp_keepalive = \"60s\"\n" + alice,
	},
	{
		name:   "allow_open with users is not open",
		config: "[server]\nallow_open = true\n" + alice,
	},
	{
		name: "everything at once",
		config: "[server]\nlisten = [\"192.0.2.7:1080\"]\n" +
			user("alice", "eth1") +
			"[[users]]\nname = \"bob\"\npassword = \"pw\"\ninterface = \"eth2\"\n" +
			user("carol", "eth3") + user("dave", "eth9") + user("eve", ""),
		host: func(h *fakeHost) {
			h.mode = 0o644
			h.rp = map[string]int{"eth2": 1}
			h.links["eth2"].default4, h.links["eth2"].default6 = nil, nil
			h.links["eth3"] = healthyLink("eth3", "10.0.3.5/24")
			h.links["eth3"].up = false
			h.servers = netipAddrs("127.0.0.53")
		},
		wantErrors: []string{
			`server.listen[0] "192.0.2.7:1080": 192.0.2.7 is not an address of this host`,
			"interface eth9 (users[3] dave): no such interface",
		},
		wantWarnings: []string{
			"test.toml: mode 0644: readable by others",
			"users[1] bob: plaintext password",
			"interface eth2 (users[1] bob): strict reverse-path filtering",
			"interface eth2 (users[1] bob): no default route out of it",
			"interface eth3 (users[2] carol): down, administratively down",
			"/etc/resolv.conf: nameserver 127.0.0.53 on loopback",
		},
		wantRows: [][]string{
			{"alice", "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "yes", "yes", ""},
			{"bob", "eth2", "up", "10.0.2.5/24", "2001:db8:2::5/64", "no", "no", "rp_filter=1 (strict); no default route; plaintext password"},
			{"carol", "eth3", "down", "10.0.3.5/24", "-", "yes", "yes", "admin down"},
			{"dave", "eth9", "missing", "-", "-", "-", "-", "no such interface"},
			{"eve", "-", "-", "-", "-", "-", "-", "kernel routing"},
		},
	},
}

func netipAddrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestReport(t *testing.T) {
	for _, tc := range checkCases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := parse(t, tc.config)
			h := healthyHost()
			if tc.host != nil {
				tc.host(h)
			}
			r := inspect(cfg, "test.toml", h)
			checkFindings(t, r, failure, tc.wantErrors)
			checkFindings(t, r, warning, tc.wantWarnings)
			if tc.wantRows != nil {
				var got [][]string
				for _, rw := range r.rows {
					got = append(got, []string{rw.user, rw.iface, rw.state, rw.ipv4, rw.ipv6, rw.default4, rw.default6, strings.Join(rw.notes, "; ")})
				}
				if !slices.EqualFunc(got, tc.wantRows, slices.Equal) {
					t.Errorf("rows:\n got %q\nwant %q", got, tc.wantRows)
				}
			}
			var out bytes.Buffer
			if n := report(&out, cfg, "test.toml", h); n != len(tc.wantErrors) {
				t.Errorf("report returned %d errors, want %d\n%s", n, len(tc.wantErrors), out.String())
			}
		})
	}
}

// checkFindings wants exactly one finding of sev per substring in want,
// in order.
func checkFindings(tb testing.TB, r *result, sev severity, want []string) {
	tb.Helper()
	var got []string
	for _, f := range r.findings {
		if f.sev == sev {
			got = append(got, f.subject+": "+f.text)
		}
	}
	ok := len(got) == len(want)
	for i := 0; ok && i < len(want); i++ {
		ok = strings.Contains(got[i], want[i])
	}
	if !ok {
		name := map[severity]string{failure: "errors", warning: "warnings"}[sev]
		tb.Errorf("%s:\n got %d:\n  %s\nwant %d containing:\n  %s", name, len(got), strings.Join(got, "\n  "), len(want), strings.Join(want, "\n  "))
	}
}

func TestWrite(t *testing.T) {
	tests := []struct {
		name   string
		config string
		host   func(*fakeHost)
		want   string
		errors int
	}{
		{
			name: "errors and warnings",
			config: user("alice", "eth1") + "[[users]]\nname = \"bob\"\npassword = \"pw\"\ninterface = \"eth2\"\n" +
				user("dave", "eth9") + user("eve", ""),
			host: func(h *fakeHost) { h.links["eth2"].addrs[1].flag = "tentative" },
			want: `config: /etc/ifsocks/config.toml

USER   INTERFACE  STATE    IPV4         IPV6                          DEFAULT4  DEFAULT6  NOTES
alice  eth1       up       10.0.1.5/24  2001:db8:1::5/64              yes       yes       -
bob    eth2       up       10.0.2.5/24  2001:db8:2::5/64 (tentative)  yes       yes       plaintext password
dave   eth9       missing  -            -                             -         -         no such interface
eve    -          -        -            -                             -         -         kernel routing

IPV6: global and unique-local addresses; link-local ones are not shown.
DEFAULT4, DEFAULT6: a default route out of the interface, in any routing table.

errors:
  interface eth9 (users[2] dave): no such interface: the daemon starts, but the flows of dave get reply 0x03 until it appears (see: ip -br link)

warnings:
  users[1] bob: plaintext password in the file: replace it with password_hash (make one with: ifsocks hash-password)

FAIL: 1 error, 1 warning
`,
			errors: 1,
		},
		{
			name:   "no users",
			config: "[server]\nlisten = [\"127.0.0.1:1080\"]\n",
			want: `config: /etc/ifsocks/config.toml

no [[users]]: clients connect without authentication and their flows use kernel routing

OK: 0 errors, 0 warnings
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := healthyHost()
			if tt.host != nil {
				tt.host(h)
			}
			var out bytes.Buffer
			n := report(&out, parse(t, tt.config), "/etc/ifsocks/config.toml", h)
			if out.String() != tt.want {
				t.Errorf("output:\n%s\nwant:\n%s", out.String(), tt.want)
			}
			if n != tt.errors {
				t.Errorf("report returned %d, want %d", n, tt.errors)
			}
		})
	}
}

func TestParseResolvConf(t *testing.T) {
	tests := []struct {
		name, text string
		want       []string
	}{
		{"empty", "", nil},
		{"stub", "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n", []string{"127.0.0.53"}},
		{"comments", "# nameserver 1.1.1.1\n; nameserver 1.0.0.1\nnameserver 9.9.9.9 # inline\n", []string{"9.9.9.9"}},
		{"at most three", "nameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver ::1\nnameserver 10.0.0.4\n", []string{"10.0.0.1", "10.0.0.2", "::1"}},
		{"names and junk skipped", "nameserver dns.example\nnameserver\nnameservers 10.0.0.9\n  nameserver\t10.0.0.1\n", []string{"10.0.0.1"}},
		{"zone", "nameserver fe80::1%eth0\n", []string{"fe80::1%eth0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, a := range parseResolvConf([]byte(tt.text)) {
				got = append(got, a.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("parseResolvConf(%q) = %q, want %q", tt.text, got, tt.want)
			}
		})
	}
}

func TestDisplay(t *testing.T) {
	for in, want := range map[string]string{
		"alice": "alice", "": `""`, "a b": `"a b"`, "tab\t": `"tab\t"`, `q"`: `"q\""`, "é": "é", "nl\n": `"nl\n"`,
	} {
		if got := display(in); got != want {
			t.Errorf("display(%q) = %s, want %s", in, got, want)
		}
	}
}
