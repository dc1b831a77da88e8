package main

import (
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/netip"
)

// connectAnswer is the whole answer ifsocks gives a CONNECT it grants. The
// client reads exactly these bytes, so a byte the upstream sends at once
// (download tests) stays in the socket for the test; it is a benchmark
// client for ifsocks, not an HTTP parser.
const connectAnswer = "HTTP/1.1 200 Connection established\r\n\r\n"

// httpConnect opens a tunnel to dst on c with an HTTP CONNECT, with Basic
// proxy credentials when user is set, and checks the answer.
func httpConnect(c net.Conn, user, pass string, dst netip.AddrPort) error {
	req := "CONNECT " + dst.String() + " HTTP/1.1\r\nHost: " + dst.String() + "\r\n"
	if user != "" {
		req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		return fmt.Errorf("write CONNECT: %w", err)
	}
	var buf [len(connectAnswer)]byte
	n, err := io.ReadFull(c, buf[:])
	if err != nil || string(buf[:]) != connectAnswer {
		return fmt.Errorf("CONNECT answer %q: %v", buf[:n], err)
	}
	return nil
}
