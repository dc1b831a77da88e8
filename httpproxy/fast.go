package httpproxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// The first request of most connections is a CONNECT (every https URL a
// browser or a tool opens through the proxy): firstConnect reads it with
// net/http's request parser and answers it without net/http's server,
// which would cost a second goroutine, a background reader and a hijack
// per tunnel. Anything else — another method, a malformed or oversized
// head, a CONNECT with a body — is given to the server untouched: the
// bytes read so far are put back in front of the connection, so it parses
// them itself and answers as it always does. So is whatever follows a
// refused CONNECT on the same connection (the retry with credentials
// after a 407, say).

var fastReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// recorder remembers the bytes read through it, at most MaxHeaderBytes:
// past that it reports EOF, and the server, given the bytes back, answers
// 431.
type recorder struct {
	r   io.Reader
	buf []byte
}

func (rc *recorder) Read(p []byte) (int, error) {
	room := MaxHeaderBytes - len(rc.buf)
	if room <= 0 {
		return 0, io.EOF
	}
	if len(p) > room {
		p = p[:room]
	}
	n, err := rc.r.Read(p)
	rc.buf = append(rc.buf, p[:n]...)
	return n, err
}

// firstConnect serves the connection's first request when it is a
// CONNECT. It reports true when a relay owns the connection. Otherwise pc
// holds in front every byte not yet answered, for the HTTP server, unless
// pc.closed says the connection is over.
func (s *session) firstConnect(pc *prefixConn) bool {
	rc := &recorder{r: pc}
	br := fastReaders.Get().(*bufio.Reader)
	br.Reset(rc)
	defer func() {
		br.Reset(nil)
		fastReaders.Put(br)
	}()
	if s.opt.HeaderTimeout > 0 {
		pc.SetReadDeadline(time.Now().Add(s.opt.HeaderTimeout))
	}
	req, err := http.ReadRequest(br)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		// The head did not come within HeaderTimeout: the server
		// would only wait for it as long again.
		pc.closed = true
		return false
	}
	if err != nil || req.Method != http.MethodConnect || req.ContentLength != 0 || len(req.TransferEncoding) > 0 {
		// Not ours: the server reads it all again.
		pc.buf = append(rc.buf, pc.buf...)
		return false
	}
	pc.SetReadDeadline(time.Time{})
	// What follows the head belongs to whoever serves next.
	rest := func() []byte {
		n := br.Buffered()
		b, _ := br.Peek(n)
		return append(bytes.Clone(b), pc.buf...)
	}
	s.b.Started()
	rep := &rawReply{pc: pc, close: req.Close}
	target, status, hint := classify(req)
	switch {
	case status != 0:
		rep.refuse(status, hint, nil)
	default:
		user, ok := s.fastAuth(req, rep)
		if !ok {
			break
		}
		rep.rest = rest
		if s.b.Connect(user, target, rep) {
			return true
		}
	}
	if rep.established {
		// Answered 200, then the relay could not start: nothing more
		// can be said on this connection.
		pc.closed = true
		return false
	}
	pc.buf = rest()
	if rep.close || rep.failed {
		pc.closed = true
	}
	s.b.Idle()
	return false
}

// fastAuth is authenticate for the fast path.
func (s *session) fastAuth(r *http.Request, rep *rawReply) (string, bool) {
	if !s.opt.AuthRequired {
		return "", true
	}
	user, pass, ok := parseBasic(r.Header.Get("Proxy-Authorization"))
	if ok && s.b.Login(user, pass) == nil {
		return user, true
	}
	rep.refuse(http.StatusProxyAuthRequired, "", http.Header{"Proxy-Authenticate": {`Basic realm="` + Realm + `", charset="UTF-8"`}})
	return "", false
}

// rawReply is a Reply written straight on the connection.
type rawReply struct {
	pc          *prefixConn
	rest        func() []byte
	close       bool // the client asked to close after this answer
	done        bool
	established bool
	failed      bool // writing the answer failed
}

func (rp *rawReply) Refuse(status int, hint string) { rp.refuse(status, hint, nil) }

func (rp *rawReply) refuse(status int, hint string, h http.Header) {
	if rp.done {
		return
	}
	rp.done = true
	body := strconv.Itoa(status) + " " + http.StatusText(status)
	if hint != "" {
		body += ": " + hint
	}
	body += "\n"
	if h == nil {
		h = http.Header{}
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	resp := &http.Response{StatusCode: status, ProtoMajor: 1, ProtoMinor: 1, Header: h,
		ContentLength: int64(len(body)), Body: io.NopCloser(bytes.NewReader([]byte(body))), Close: rp.close}
	var out bytes.Buffer
	if err := resp.Write(&out); err != nil {
		rp.failed = true
		return
	}
	if _, err := rp.pc.Conn.Write(out.Bytes()); err != nil {
		rp.failed = true
	}
}

func (rp *rawReply) Establish() ([]byte, error) {
	if rp.done {
		return nil, errAnswered
	}
	rp.done = true
	rp.established = true
	early := rp.rest()
	rp.pc.buf = nil
	if _, err := io.WriteString(rp.pc.Conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return nil, err
	}
	return early, nil
}
