package socks

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/policy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/crypto/bcrypt"
)

// The fuzz targets of this file cover every parser of bytes from a client:
// the greeting, the RFC 1929 sub-negotiation, and a whole connection from
// greeting to reply (FuzzServeConn). FuzzReadRequest (wire_test.go) and
// FuzzParseUDPHeader (udp_test.go) cover the request and the UDP header.
// Their seeds are committed under testdata/fuzz/<target>/; seedCorpus
// below lists them, TestSeedCorpus checks the files match, and
// `go test -run TestSeedCorpus ./socks -update-corpus` rewrites them.

// FuzzReadGreeting checks readGreeting against the RFC 1928 layout: it
// accepts exactly VER=5, NMETHODS, METHODS, consumes nothing more, and
// gives the same answer however the bytes are split into reads.
func FuzzReadGreeting(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		methods, err := readGreeting(r)
		m1, err1 := readGreeting(iotest.OneByteReader(bytes.NewReader(in)))
		if !bytes.Equal(methods, m1) || (err == nil) != (err1 == nil) {
			t.Fatalf("whole read: % x, %v; byte by byte: % x, %v", methods, err, m1, err1)
		}
		switch {
		case len(in) < 2:
			wantEOF(t, err)
		case in[0] != socks5Version:
			if !errors.Is(err, errVersion) {
				t.Fatalf("version %#x: err = %v, want errVersion", in[0], err)
			}
		case len(in) < 2+int(in[1]):
			wantEOF(t, err)
		default:
			n := int(in[1])
			if err != nil || !bytes.Equal(methods, in[2:2+n]) || len(methods) != n {
				t.Fatalf("got % x, %v; want methods % x", methods, err, in[2:2+n])
			}
			if consumed := len(in) - r.Len(); consumed != 2+n {
				t.Fatalf("consumed %d bytes, want %d", consumed, 2+n)
			}
		}
	})
}

// FuzzReadUserPass checks readUserPass against the RFC 1929 layout: VER=1,
// ULEN, UNAME, PLEN, PASSWD and nothing more, whatever the read sizes.
func FuzzReadUserPass(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		user, pass, err := readUserPass(r)
		u1, p1, err1 := readUserPass(iotest.OneByteReader(bytes.NewReader(in)))
		if user != u1 || pass != p1 || (err == nil) != (err1 == nil) {
			t.Fatalf("whole read: %q %q %v; byte by byte: %q %q %v", user, pass, err, u1, p1, err1)
		}
		if len(in) < 2 {
			wantEOF(t, err)
			return
		}
		if in[0] != userPassVersion {
			if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("version %#x: err = %v, want a version error", in[0], err)
			}
			return
		}
		ulen := int(in[1])
		if len(in) < 3+ulen || len(in) < 3+ulen+int(in[2+ulen]) {
			wantEOF(t, err)
			return
		}
		plen := int(in[2+ulen])
		wantUser, wantPass := string(in[2:2+ulen]), string(in[3+ulen:3+ulen+plen])
		if err != nil || user != wantUser || pass != wantPass {
			t.Fatalf("got %q %q %v; want %q %q", user, pass, err, wantUser, wantPass)
		}
		if consumed := len(in) - r.Len(); consumed != 3+ulen+plen {
			t.Fatalf("consumed %d bytes, want %d", consumed, 3+ulen+plen)
		}
	})
}

func wantEOF(tb testing.TB, err error) {
	tb.Helper()
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		tb.Fatalf("truncated input: err = %v, want EOF", err)
	}
}

// Accounts of the FuzzServeConn server. A MinCost bcrypt account makes the
// store's dummy hash MinCost too, so a failed login costs about a
// millisecond instead of the default cost's tens.
const (
	fuzzUser     = "fuzz"
	fuzzPass     = "fuzz-pw"
	fuzzHashUser = "hashed"
	fuzzHashPass = "hashed-pw"
)

// fuzzServeSettings returns the settings of FuzzServeConn: with users
// (method 0x02), or without authentication. Every egress is kernel routing
// (""), which no request can reach anyway: CONNECT over a net.Pipe is
// refused before any dial, UDP ASSOCIATE once it finds the pipe has no IP.
func fuzzServeSettings(tb testing.TB, withAuth bool) *Settings {
	tb.Helper()
	st := &Settings{
		Policy:           policy.New(nil, false),
		HandshakeTimeout: 2 * time.Second,
		ConnectTimeout:   time.Second,
		UDP:              UDPSettings{MaxAssociations: 1, MaxDatagram: 1500},
	}
	if !withAuth {
		return st
	}
	h, err := bcrypt.GenerateFromPassword([]byte(fuzzHashPass), bcrypt.MinCost)
	if err != nil {
		tb.Fatal(err)
	}
	st.Auth, err = auth.NewStore([]auth.Account{
		{Name: fuzzUser, Password: fuzzPass},
		{Name: fuzzHashUser, Hash: string(h)},
	}, auth.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	st.Users = map[string]User{fuzzUser: {}, fuzzHashUser: {}}
	return st
}

// FuzzServeConn drives one whole server connection through net.Pipe. The
// first input byte picks the server (bit 0 set: with users); the rest is
// what the client sends before it hangs up. The server must not panic, must
// send exactly what wantServerBytes derives from the RFCs, must end the
// connection, and must leave no goroutine behind.
func FuzzServeConn(f *testing.F) {
	settings := [2]*Settings{fuzzServeSettings(f, false), fuzzServeSettings(f, true)}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		withAuth := in[0]&1 == 1
		stream := in[1:]
		got, logs := serveOverPipe(t, settings[in[0]&1], stream)
		want := wantServerBytes(stream, withAuth)
		if !bytes.Equal(got, want) {
			t.Fatalf("auth %v, client sent % x\nserver sent % x\nwant        % x", withAuth, stream, got, want)
		}
		if i := unsafeLogIndex(logs); i >= 0 {
			t.Fatalf("non-printable character in log output at %d: %q", i, logs)
		}
	})
}

// starvedConn is the server's end of the pipe. It reports when the server
// asks for more bytes after it has read all the client will send: the
// server has then written everything it has to say about them (writes on a
// pipe return only once read), so the client can hang up.
type starvedConn struct {
	net.Conn
	left    int // bytes the client will still send; read only by the server goroutine
	starved chan struct{}
	once    sync.Once
}

func (c *starvedConn) Read(p []byte) (int, error) {
	if c.left <= 0 {
		c.once.Do(func() { close(c.starved) })
	}
	n, err := c.Conn.Read(p)
	c.left -= n
	return n, err
}

// serveOverPipe serves one connection on which the client sends stream and
// hangs up once the server waits for more. It returns the bytes the server
// sent and the log output.
func serveOverPipe(tb testing.TB, st *Settings, stream []byte) (sent []byte, logs []byte) {
	tb.Helper()
	goroutines := runtime.NumGoroutine()
	var logBuf syncBuffer
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	srv := New(zap.New(zapcore.NewCore(enc, &logBuf, zapcore.DebugLevel)), st)
	client, server := net.Pipe()
	sc := &starvedConn{Conn: server, left: len(stream), starved: make(chan struct{})}
	start := time.Now()
	srv.startConn(sc, "", "pipe")

	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		var b [512]byte
		for {
			n, err := client.Read(b[:])
			sent = append(sent, b[:n]...)
			if err != nil {
				return
			}
		}
	}()
	writeDone := make(chan struct{})
	go func() {
		defer close(writeDone)
		if len(stream) > 0 {
			client.Write(stream) // fails once the server has closed; that is fine
		}
	}()
	// The handshake deadline bounds everything before the reply, and
	// nothing here outlives the reply: the server must be done by then.
	limit := time.NewTimer(st.HandshakeTimeout + time.Second)
	defer limit.Stop()
	select {
	case <-sc.starved:
	case <-readDone: // the server closed the connection
	case <-limit.C:
		tb.Fatalf("server neither closed nor waited for input %v after the client sent % x", time.Since(start), stream)
	}
	client.Close()
	<-readDone
	<-writeDone

	for srv.ActiveConns() != 0 {
		if time.Since(start) > st.HandshakeTimeout+time.Second {
			tb.Fatalf("ActiveConns = %d %v after the client hung up (sent % x)", srv.ActiveConns(), time.Since(start), stream)
		}
		runtime.Gosched()
	}
	srv.Close()
	for runtime.NumGoroutine() > goroutines {
		if time.Since(start) > st.HandshakeTimeout+2*time.Second {
			buf := make([]byte, 1<<20)
			tb.Fatalf("%d goroutines, %d before; client sent % x\n%s",
				runtime.NumGoroutine(), goroutines, stream, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
	}
	return sent, logBuf.Bytes()
}

// syncBuffer is a zapcore.WriteSyncer into memory.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Sync() error { return nil }

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// unsafeLogIndex returns the offset in log output of the first character
// that is not printable (see nonPrintable) other than the newline ending
// each line, or -1.
func unsafeLogIndex(b []byte) int {
	off := 0
	for line := range strings.SplitAfterSeq(string(b), "\n") {
		if i := nonPrintable(strings.TrimSuffix(line, "\n")); i >= 0 {
			return off + i
		}
		off += len(line)
	}
	return -1
}

// wantServerBytes is what a correct server sends to a client that sends
// stream and then hangs up, derived from RFC 1928 and RFC 1929 as ifsocks
// applies them:
//
//   - greeting: nothing for a wrong version or a short greeting; 05 FF when
//     the methods lack the server's (0x02 with users, else 0x00), then close;
//     else 05 <method>.
//   - with users: nothing for a short sub-negotiation (the status would go to
//     a client that has hung up); 01 01 and close for a wrong version or bad
//     credentials; else 01 00.
//   - request: nothing for a wrong version or a short request; 0x07 for an
//     unknown command, 0x08 for an unknown address type, 0x04 for a domain
//     name that is neither a host name nor an IP literal. A well-formed
//     CONNECT or BIND gets 0x01 (the pipe is not TCP), UDP ASSOCIATE 0x01
//     (the pipe has no IP to put a relay on). Every reply is followed by
//     the close; bytes after the request are never answered.
//
// It is written from those rules and not from wire.go, so that the two can
// disagree.
func wantServerBytes(stream []byte, withAuth bool) []byte {
	p := stream
	take := func(n int) ([]byte, bool) {
		if len(p) < n {
			return nil, false
		}
		b := p[:n]
		p = p[n:]
		return b, true
	}
	var out []byte
	hdr, ok := take(2)
	if !ok || hdr[0] != 5 {
		return out
	}
	methods, ok := take(int(hdr[1]))
	if !ok {
		return out
	}
	method := byte(0x00)
	if withAuth {
		method = 0x02
	}
	if bytes.IndexByte(methods, method) < 0 {
		return append(out, 5, 0xFF)
	}
	out = append(out, 5, method)

	if withAuth {
		hdr, ok := take(2)
		if !ok {
			return out
		}
		if hdr[0] != 1 {
			return append(out, 1, 1)
		}
		user, ok := take(int(hdr[1]))
		if !ok {
			return out
		}
		plen, ok := take(1)
		if !ok {
			return out
		}
		pass, ok := take(int(plen[0]))
		if !ok {
			return out
		}
		good := string(user) == fuzzUser && string(pass) == fuzzPass ||
			string(user) == fuzzHashUser && string(pass) == fuzzHashPass
		if !good {
			return append(out, 1, 1)
		}
		out = append(out, 1, 0)
	}

	reply := func(rep byte) []byte { return append(out, 5, rep, 0, 1, 0, 0, 0, 0, 0, 0) }
	req, ok := take(4)
	if !ok || req[0] != 5 {
		return out
	}
	cmd := req[1]
	if cmd != 1 && cmd != 2 && cmd != 3 {
		return reply(0x07)
	}
	switch req[3] {
	case 1:
		if _, ok := take(4 + 2); !ok {
			return out
		}
	case 4:
		if _, ok := take(16 + 2); !ok {
			return out
		}
	case 3:
		n, ok := take(1)
		if !ok {
			return out
		}
		name, ok := take(int(n[0]))
		if !ok {
			return out
		}
		if _, ok := take(2); !ok {
			return out
		}
		if !modelHostOK(string(name)) {
			return reply(0x04)
		}
	default:
		return reply(0x08)
	}
	// CONNECT and BIND need TCP for their relay, UDP ASSOCIATE an IP for
	// its socket: over a pipe each ends in a general failure.
	return reply(0x01)
}

// modelHostOK is the domain rule of the server written out again: an IP
// literal (brackets allowed, no zone), or a host name of labels of 1-63
// letters, digits, '-' and '_', at most 253 bytes without an optional
// final dot.
func modelHostOK(name string) bool {
	lit := strings.TrimSuffix(strings.TrimPrefix(name, "["), "]")
	if ip, err := netip.ParseAddr(lit); err == nil && ip.Zone() == "" {
		return true
	}
	s := strings.TrimSuffix(name, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if len(label) < 1 || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/fuzz seed files from seedCorpus")

// seedCorpus returns the committed seeds: target -> file name -> input.
func seedCorpus() map[string]map[string][]byte {
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	userPass := func(u, p string) []byte {
		return cat([]byte{1, byte(len(u))}, []byte(u), []byte{byte(len(p))}, []byte(p))
	}
	domain := func(name string, port uint16) []byte {
		return cat([]byte{atypDomain, byte(len(name))}, []byte(name), []byte{byte(port >> 8), byte(port)})
	}
	ipv4 := []byte{atypIPv4, 192, 0, 2, 7, 0x01, 0xbb}
	ipv6 := cat([]byte{atypIPv6}, netip.MustParseAddr("2001:db8::7").AsSlice(), []byte{0, 80})
	mapped := cat([]byte{atypIPv6}, netip.MustParseAddr("::ffff:192.0.2.7").AsSlice(), []byte{0, 80})
	addrs := map[string][]byte{"ipv4": ipv4, "ipv6": ipv6, "domain": domain("example.org", 443)}
	cmds := map[string]byte{"connect": cmdConnect, "bind": cmdBind, "udp": cmdUDPAssociate}
	long := strings.Repeat("l", 255)

	greeting := map[string][]byte{
		"noauth":            {5, 1, 0},
		"userpass":          {5, 1, 2},
		"both":              {5, 2, 0, 2},
		"zero-methods":      {5, 0},
		"gssapi-only":       {5, 1, 1},
		"more-than-sent":    {5, 3, 0, 2},
		"version-only":      {5},
		"empty":             {},
		"socks4":            {4, 1, 0, 80, 127, 0, 0, 1, 0},
		"followed-by-login": cat([]byte{5, 1, 2}, userPass("alice", "alice-pw")),
	}
	all := []byte{5, 255}
	for m := range 255 {
		all = append(all, byte(m))
	}
	greeting["255-methods"] = all

	auth := map[string][]byte{
		"valid":              userPass("alice", "alice-pw"),
		"empty-user-pass":    {1, 0, 0},
		"empty-user":         userPass("", "pw"),
		"empty-pass":         userPass("alice", ""),
		"longest":            userPass(long, long),
		"user-longer":        cat([]byte{1, 9}, []byte("ali")),
		"pass-longer":        cat([]byte{1, 5}, []byte("alice"), []byte{8}, []byte("al")),
		"no-pass-length":     cat([]byte{1, 5}, []byte("alice")),
		"version-5":          {5, 1, 'a', 1, 'b'},
		"control-characters": userPass("\x1b[31m\r\n\x00", "pw"),
		"followed-by-request": cat(userPass("alice", "alice-pw"),
			[]byte{5, cmdConnect, 0}, ipv4),
	}

	request := map[string][]byte{
		"ip-literal-domain":      cat([]byte{5, cmdConnect, 0}, domain("127.0.0.1", 80)),
		"bracketed-ipv6-literal": cat([]byte{5, cmdConnect, 0}, domain("[::1]", 80)),
		"zoned-ipv6-literal":     cat([]byte{5, cmdConnect, 0}, domain("fe80::1%lo", 80)),
		"mapped-ipv6":            cat([]byte{5, cmdConnect, 0}, mapped),
		"domain-trailing-dot":    cat([]byte{5, cmdConnect, 0}, domain("example.org.", 80)),
		"domain-empty":           cat([]byte{5, cmdConnect, 0}, domain("", 80)),
		"domain-nul":             cat([]byte{5, cmdConnect, 0}, domain("a\x00.org", 80)),
		"domain-escape":          cat([]byte{5, cmdConnect, 0}, domain("\x1b[31m.org", 80)),
		"domain-c1-del":          cat([]byte{5, cmdConnect, 0}, domain("\u009b31m\x7f.org", 80)),
		"domain-255":             cat([]byte{5, cmdConnect, 0}, domain(long, 80)),
		"domain-label-64":        cat([]byte{5, cmdConnect, 0}, domain(strings.Repeat("x", 64)+".org", 80)),
		"domain-length-only":     {5, cmdConnect, 0, atypDomain, 255},
		"unknown-command":        cat([]byte{5, 9, 0}, ipv4),
		"unknown-atyp":           {5, cmdConnect, 0, 2, 10, 0, 0, 1, 0, 80},
		"wrong-version":          cat([]byte{4, cmdConnect, 0}, ipv4),
		"header-only":            {5, cmdConnect, 0},
		"with-early-data":        cat([]byte{5, cmdConnect, 0}, ipv4, []byte("GET / HTTP/1.0\r\n\r\n")),
	}
	for an, a := range addrs {
		for cn, c := range cmds {
			full := cat([]byte{5, c, 0}, a)
			request[cn+"-"+an] = full
			if c == cmdConnect {
				request["connect-"+an+"-truncated"] = full[:len(full)-1]
			}
		}
	}

	udp := map[string][]byte{
		"ipv4":              cat([]byte{0, 0, 0}, ipv4, []byte("payload")),
		"ipv6":              cat([]byte{0, 0, 0}, ipv6, []byte("payload")),
		"domain":            cat([]byte{0, 0, 0}, domain("example.org", 53), []byte("query")),
		"ip-literal-domain": cat([]byte{0, 0, 0}, domain("192.0.2.7", 53), []byte("q")),
		"domain-nul":        cat([]byte{0, 0, 0}, domain("a\x00b", 53), []byte("q")),
		"empty-payload":     cat([]byte{0, 0, 0}, ipv4),
		"fragment":          cat([]byte{0, 0, 1}, ipv4, []byte("x")),
		"rsv-set":           cat([]byte{0, 1, 0}, ipv4, []byte("x")),
		"unknown-atyp":      {0, 0, 0, 9, 1, 2, 3, 4, 0, 53},
		"short":             {0, 0, 0},
		"truncated-ipv6":    cat([]byte{0, 0, 0}, ipv6[:10]),
	}

	// FuzzServeConn: mode byte (0 without users, 1 with), then the stream.
	serve := map[string][]byte{
		"empty":                 {0},
		"noauth-zero-methods":   {0, 5, 0},
		"noauth-userpass-only":  {0, 5, 1, 2},
		"noauth-socks4":         {0, 4, 1, 0, 80, 127, 0, 0, 1, 0},
		"noauth-greeting-short": {0, 5, 2, 0},
		"auth-noauth-only":      {1, 5, 1, 0},
		"auth-wrong-password":   cat([]byte{1, 5, 1, 2}, userPass(fuzzUser, "nope")),
		"auth-unknown-user":     cat([]byte{1, 5, 1, 2}, userPass("mallory", fuzzPass)),
		"auth-empty-user":       cat([]byte{1, 5, 1, 2}, userPass("", fuzzPass)),
		"auth-version-5":        {1, 5, 1, 2, 5, 1, 'a', 1, 'b'},
		"auth-user-c1-del":      cat([]byte{1, 5, 1, 2}, userPass("\u009b31m\x7f", fuzzPass)),
		"auth-user-longer":      cat([]byte{1, 5, 1, 2, 1, 20}, []byte(fuzzUser)),
		"auth-hashed-user": cat([]byte{1, 5, 1, 2}, userPass(fuzzHashUser, fuzzHashPass),
			[]byte{5, cmdConnect, 0}, ipv4),
	}
	for rn, r := range request {
		serve["noauth-"+rn] = cat([]byte{0, 5, 1, 0}, r)
		serve["auth-"+rn] = cat([]byte{1, 5, 2, 0, 2}, userPass(fuzzUser, fuzzPass), r)
	}

	return map[string]map[string][]byte{
		"FuzzReadGreeting":   greeting,
		"FuzzReadUserPass":   auth,
		"FuzzReadRequest":    request,
		"FuzzParseUDPHeader": udp,
		"FuzzServeConn":      serve,
		"FuzzServeMixed":     mixedSeeds(),
	}
}

// corpusFile is the "go test fuzz v1" encoding of one []byte input.
func corpusFile(in []byte) []byte {
	return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", in)
}

// TestSeedCorpus checks that testdata/fuzz holds every seed of seedCorpus
// as written there, so that the seeds above are what `go test` runs.
func TestSeedCorpus(t *testing.T) {
	for target, seeds := range seedCorpus() {
		dir := filepath.Join("testdata", "fuzz", target)
		if *updateCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for name, in := range seeds {
			path := filepath.Join(dir, name)
			want := corpusFile(in)
			if *updateCorpus {
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s: missing or stale (%v); run go test -run TestSeedCorpus ./socks -update-corpus", path, err)
			}
		}
	}
}
