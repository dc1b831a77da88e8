// Package bench holds the ifsocks benchmark: run.sh builds a client /
// proxy / upstream set of network namespaces and measures ifsocks against
// kernel forwarding, a bare forwarder (cmd/ifsbare: the ceiling of a
// user-space relay), Dante and microsocks with the load tool in
// cmd/ifsbench. See README.md.
//
// The package has no code of its own; its test runs the benchmark in its
// short mode as a smoke test. The figures are never asserted: they depend
// on the machine.
package bench
