//go:build linux

package test

import (
	"errors"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Addresses of the test topology. Everything lives in 10.231.0.0/16 and
// fd31::/16 inside our own namespaces; no test ever sends traffic elsewhere.
const (
	clientV4 = "10.231.0.2" // C c0
	proxyV4  = "10.231.0.1" // P cl0, where the daemon listens
	wan1V4   = "10.231.1.1" // P wan1 (alice)
	wan2V4   = "10.231.2.1" // P wan2 (bob)
	svcV4    = "10.231.9.9" // U service address (whoami + DNS)
	wan1V6   = "fd31:1::1"
	wan2V6   = "fd31:2::1"
	svcV6    = "fd31:9::9"

	proxyListen4 = "10.231.0.1:1080"
	proxyListen6 = "[fd31::1]:1080"
	nsPrefix     = "ifst"
)

// topology names the C (client) / P (proxy) / U (upstream) namespaces of
// a test environment. The package's own is built by nstest.BuildTopology
// (newTopology); the egress, privilege and soak sets build theirs and list
// what they created in created, which destroy deletes.
type topology struct {
	C, P, U string
	created []string // namespaces actually created, for teardown
	nst     *nstest.Topology
}

// newTopology builds the package's topology (see the constants above).
func newTopology() (*topology, error) {
	nt, err := nstest.BuildTopology(nstest.TopologyConfig{Prefix: nsPrefix, Net: 231, V6: "fd31"})
	if err != nil {
		return nil, err
	}
	return &topology{C: nt.C.Name, P: nt.P.Name, U: nt.U.Name, nst: nt}, nil
}

// destroy removes everything the topology holds, killing processes still
// inside its namespaces (only ever processes this test binary started).
func (t *topology) destroy() error {
	var errs []error
	if t.nst != nil {
		errs = append(errs, t.nst.Close())
		t.nst = nil
	}
	for _, ns := range t.created {
		errs = append(errs, nstest.DeleteNamed(ns))
	}
	t.created = nil
	return errors.Join(errs...)
}
