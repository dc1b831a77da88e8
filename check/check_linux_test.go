package check

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestDefaultRouteOutOf(t *testing.T) {
	_, any4, _ := net.ParseCIDR("0.0.0.0/0")
	_, any6, _ := net.ParseCIDR("::/0")
	_, net10, _ := net.ParseCIDR("10.0.0.0/8")
	tests := []struct {
		name  string
		route netlink.Route
		want  bool
	}{
		{"ipv4 default", netlink.Route{Type: unix.RTN_UNICAST, Dst: any4, LinkIndex: 3}, true},
		{"ipv6 default", netlink.Route{Type: unix.RTN_UNICAST, Dst: any6, LinkIndex: 3}, true},
		{"nil dst", netlink.Route{Type: unix.RTN_UNICAST, LinkIndex: 3}, true},
		{"other interface", netlink.Route{Type: unix.RTN_UNICAST, Dst: any4, LinkIndex: 4}, false},
		{"multipath nexthop", netlink.Route{Type: unix.RTN_UNICAST, Dst: any4, MultiPath: []*netlink.NexthopInfo{{LinkIndex: 4}, {LinkIndex: 3}}}, true},
		{"multipath elsewhere", netlink.Route{Type: unix.RTN_UNICAST, Dst: any4, MultiPath: []*netlink.NexthopInfo{{LinkIndex: 4}}}, false},
		{"not default", netlink.Route{Type: unix.RTN_UNICAST, Dst: net10, LinkIndex: 3}, false},
		{"unreachable default", netlink.Route{Type: unix.RTN_UNREACHABLE, Dst: any6, LinkIndex: 3}, false},
		{"blackhole default", netlink.Route{Type: unix.RTN_BLACKHOLE, Dst: any4}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isDefault(tt.route) && outOf(tt.route, 3); got != tt.want {
				t.Errorf("default route out of ifindex 3 = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestAddrFlag(t *testing.T) {
	for f, want := range map[int]string{
		0: "", unix.IFA_F_PERMANENT: "", unix.IFA_F_TENTATIVE: "tentative",
		unix.IFA_F_TENTATIVE | unix.IFA_F_DADFAILED: "dadfailed", unix.IFA_F_DEPRECATED: "deprecated",
	} {
		if got := addrFlag(f); got != want {
			t.Errorf("addrFlag(%#x) = %q, want %q", f, got, want)
		}
	}
}
