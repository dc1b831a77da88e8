package httpproxy

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
)

// Hints in the body of a 400, for people who point a browser or a plain
// HTTP client at the proxy port itself.
const (
	hintOriginForm = "this is a proxy: send requests with an absolute URL (GET http://host/path) or CONNECT host:port"
	hintScheme     = "only http:// URLs are forwarded; use CONNECT for https"
	hintTrace      = "TRACE is not forwarded"
)

func (s *session) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.wg.Add(1)
	defer s.wg.Done()
	s.b.Started()
	target, status, hint := classify(r)
	if status != 0 {
		if status == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", "CONNECT, GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		}
		refuse(w, status, hint)
		return
	}
	user, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	if r.Method == http.MethodConnect {
		rep := &reply{w: w}
		if s.b.Connect(user, target, rep) {
			s.handedOff.Store(true)
		}
		return
	}
	s.forward(w, r, user, target)
}

// classify checks the request form: CONNECT host:port, or an absolute
// http:// URL. It returns the target "host:port" or a status and hint.
func classify(r *http.Request) (target string, status int, hint string) {
	switch {
	case r.Method == http.MethodConnect:
		// net/http accepts only the authority form for CONNECT.
		host, port, err := net.SplitHostPort(r.Host)
		if err != nil || host == "" || port == "" {
			return "", http.StatusBadRequest, "CONNECT needs host:port"
		}
		return r.Host, 0, ""
	case r.Method == http.MethodTrace || r.Method == "TRACK":
		// A TRACE echoes the request, headers included, back to a
		// page's script (cross-site tracing); there is no use for it
		// through this proxy.
		return "", http.StatusMethodNotAllowed, hintTrace
	case !r.URL.IsAbs():
		return "", http.StatusBadRequest, hintOriginForm
	case r.URL.Scheme != "http" || r.URL.Host == "":
		return "", http.StatusBadRequest, hintScheme
	}
	host := r.URL.Host
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(strings.Trim(host, "[]"), "80")
	}
	return host, 0, ""
}

// authenticate checks Proxy-Authorization when the connection needs it,
// and answers 407 when it is missing or wrong. A missing header is the
// first step of every browser's login and is not counted as a failure; a
// wrong one is (by Login). Unknown user and wrong password get the same
// answer.
func (s *session) authenticate(w http.ResponseWriter, r *http.Request) (string, bool) {
	if !s.opt.AuthRequired {
		return "", true
	}
	user, pass, ok := parseBasic(r.Header.Get("Proxy-Authorization"))
	if ok && s.b.Login(user, pass) == nil {
		return user, true
	}
	w.Header().Set("Proxy-Authenticate", `Basic realm="`+Realm+`", charset="UTF-8"`)
	refuse(w, http.StatusProxyAuthRequired, "")
	return "", false
}

// parseBasic decodes "Basic base64(user:pass)" (RFC 7617). The scheme is
// case-insensitive; user and password are taken as the bytes sent (UTF-8
// by RFC 7617's charset, which the challenge announces).
func parseBasic(h string) (user, pass string, ok bool) {
	const prefix = "basic "
	if len(h) < len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(h[len(prefix):]))
	if err != nil {
		return "", "", false
	}
	user, pass, ok = strings.Cut(string(raw), ":")
	if !ok {
		return "", "", false
	}
	return user, pass, true
}

// refuse writes status with a one-line text body: the status text, and a
// hint when there is one. Never internals.
func refuse(w http.ResponseWriter, status int, hint string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	if hint != "" {
		fmt.Fprintf(w, "%d %s: %s\n", status, http.StatusText(status), hint)
		return
	}
	fmt.Fprintf(w, "%d %s\n", status, http.StatusText(status))
}

// reply is a Reply on a ResponseWriter.
type reply struct {
	w    http.ResponseWriter
	done bool
}

func (rp *reply) Refuse(status int, hint string) {
	if rp.done {
		return
	}
	rp.done = true
	refuse(rp.w, status, hint)
}

// errAnswered: Establish after the request was already answered.
var errAnswered = errors.New("httpproxy: request already answered")

// Establish answers 200 and hijacks the connection. The status line is
// written on the raw connection, after net/http let go of it, so that
// nothing of net/http's own (a Content-Length, a chunked body) follows.
func (rp *reply) Establish() ([]byte, error) {
	if rp.done {
		return nil, errAnswered
	}
	rp.done = true
	c, brw, err := http.NewResponseController(rp.w).Hijack()
	if err != nil {
		return nil, fmt.Errorf("hijack: %w", err)
	}
	var early []byte
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		early = append(early, b...)
	}
	if pc, ok := c.(*prefixConn); ok && len(pc.buf) > 0 {
		early = append(early, pc.buf...)
		pc.buf = nil
	}
	if _, err := c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		return nil, fmt.Errorf("write 200: %w", err)
	}
	return early, nil
}
