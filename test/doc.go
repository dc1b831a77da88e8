// Package test holds the network-namespace integration tests of ifsocks.
//
// The tests build three network namespaces (client C, proxy P, upstream U),
// run the daemon inside P and check, from C, that every user's traffic leaves
// P through that user's interface. They need root; run them with
//
//	sudo go test -race -count=1 ./test/...
//
// All code lives in _test.go files; this file only makes the directory a
// regular package so that `go build ./...` and `go vet ./...` accept it.
package test
