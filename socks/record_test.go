package socks

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

// TestFlowFieldsSized: a flow line's fields are made in one slice of
// exactly their number, whatever the line has: no second allocation when
// it is longer than usual, no room wasted (a zap.Field is 64 bytes).
func TestFlowFieldsSized(t *testing.T) {
	ap := netip.MustParseAddrPort("192.0.2.1:80")
	for mask := range 1 << 7 {
		r := record{protocol: protoSOCKS5, user: "bob", client: ap, listener: "l"}
		if mask&1 != 0 {
			r.remote = ap
		}
		if mask&2 != 0 {
			r.local = ap
		}
		if mask&4 != 0 {
			r.method, r.status = "GET", 200
		}
		if mask&8 != 0 {
			r.rotation = "flow"
		}
		if mask&16 != 0 {
			r.session = "k"
		}
		if mask&32 != 0 {
			r.skipped = []string{"eth1: down"}
		}
		if mask&64 != 0 {
			r.err = errors.New("x")
		}
		t.Run(fmt.Sprintf("%07b", mask), func(t *testing.T) {
			f := r.flowFields()
			if len(f) != cap(f) {
				t.Errorf("%d fields in a slice of %d", len(f), cap(f))
			}
		})
	}
}
