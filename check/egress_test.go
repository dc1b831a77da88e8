package check

import "testing"

// egressCases cover the egress forms beyond one interface per user: they
// run through TestReport's machinery.
var egressCases = []checkCase{
	{
		name: "several interfaces, one missing",
		config: "[[users]]\nname = \"carol\"\npassword_hash = \"" + hash + "\"\n" +
			"interfaces = [\"eth1\", \"eth9\", \"eth2\"]\nstrategy = \"round-robin\"\n",
		wantErrors: []string{"interface eth9 (users[0] carol): no such interface"},
		wantRows: [][]string{
			{"carol", "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "yes", "yes", "round-robin 1/3"},
			{"carol", "eth9", "missing", "-", "-", "-", "-", "round-robin 2/3; no such interface"},
			{"carol", "eth2", "up", "10.0.2.5/24", "2001:db8:2::5/64", "yes", "yes", "round-robin 3/3"},
		},
	},
	{
		name:     "ingress",
		config:   user("ivan", "ingress"),
		wantRows: [][]string{{"ivan", "-", "-", "-", "-", "-", "-", "ingress: the interface of the address each client connects to"}},
	},
	{
		name:     "source address on the host",
		config:   user("sam", "") + "source_ip = \"10.0.2.5\"\n",
		wantRows: [][]string{{"sam", "eth2", "up", "10.0.2.5/24", "2001:db8:2::5/64", "yes", "yes", "source 10.0.2.5"}},
	},
	{
		name:       "source address not on the host",
		config:     user("sam", "") + "source_ip = \"172.31.0.14\"\n",
		wantErrors: []string{"users[0] sam: source_ip 172.31.0.14 is not an address of this host"},
		wantRows:   [][]string{{"sam", "-", "-", "-", "-", "-", "-", "source 172.31.0.14 not on this host"}},
	},
	{
		name:         "mark needs CAP_NET_ADMIN",
		config:       user("mia", "eth1") + "mark = 100\n",
		wantWarnings: []string{"users[0] mia: mark = 100 sets SO_MARK, which needs CAP_NET_ADMIN"},
		wantRows:     [][]string{{"mia", "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "yes", "yes", "mark 100"}},
	},
	{
		name: "no-auth listener with its interface, and a foreign listener address",
		config: alice + "[[listeners]]\naddress = \"10.0.1.5:1081\"\nauth = \"none\"\nallow_clients = [\"10.0.0.0/8\"]\ninterface = \"eth2\"\n" +
			"[[listeners]]\naddress = \"192.0.2.7:1082\"\n",
		wantErrors: []string{`listeners[1].address "192.0.2.7:1082": 192.0.2.7 is not an address of this host`},
		wantRows: [][]string{
			{"alice", "eth1", "up", "10.0.1.5/24", "2001:db8:1::5/64", "yes", "yes", ""},
			{"listener 10.0.1.5:1081", "eth2", "up", "10.0.2.5/24", "2001:db8:2::5/64", "yes", "yes", ""},
		},
	},
}

func init() { checkCases = append(checkCases, egressCases...) }

// TestEgressCasesRegistered guards against the cases silently not running.
func TestEgressCasesRegistered(t *testing.T) {
	n := 0
	for _, c := range checkCases {
		for _, e := range egressCases {
			if c.name == e.name {
				n++
			}
		}
	}
	if n != len(egressCases) {
		t.Fatalf("%d of %d egress cases in checkCases", n, len(egressCases))
	}
}
