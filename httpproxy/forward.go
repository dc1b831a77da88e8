package httpproxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"strings"
	"sync/atomic"
	"time"
)

// Via is the pseudonym this proxy adds to Via (RFC 9110 section 7.6.3).
const Via = "1.1 ifsocks"

// forward sends an absolute-form request to its origin through the user's
// Transport and copies the answer back. net/http's ReverseProxy does the
// work: hop-by-hop headers (Connection and those it names, Keep-Alive,
// Proxy-Connection, Proxy-Authenticate, Proxy-Authorization, TE, Trailer,
// Transfer-Encoding, Upgrade) are removed, bodies stream both ways, and an
// Upgrade (WebSocket) becomes a two-way copy once the origin answers 101.
func (s *session) forward(w http.ResponseWriter, r *http.Request, user, target string) {
	rep := &reply{w: w}
	if !s.b.Admit(user, target, r.Method, rep) {
		return
	}
	ex := &Exchange{User: user, Method: r.Method, Target: target, Start: time.Now()}
	var mark [2]int64
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		ex.Conn = info.Conn
		if cc, ok := info.Conn.(*countConn); ok {
			mark = [2]int64{cc.up.Load(), cc.down.Load()}
		}
	}}
	rp := &httputil.ReverseProxy{
		Transport: s.transport(user),
		Rewrite: func(pr *httputil.ProxyRequest) {
			h := pr.Out.Header
			for k := range h {
				if strings.HasPrefix(k, "Proxy-") {
					delete(h, k)
				}
			}
			h.Add("Via", viaFor(pr.In))
			pr.Out = pr.Out.WithContext(httptrace.WithClientTrace(pr.Out.Context(), trace))
		},
		ModifyResponse: func(resp *http.Response) error {
			ex.Status = resp.StatusCode
			resp.Header.Add("Via", Via)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			ex.Err = err
			if r.Context().Err() != nil {
				return // the client went away: nobody to answer
			}
			if ex.Status != 0 {
				return // the head is out; the body broke off
			}
			ex.Status = s.b.Status(err)
			refuse(w, ex.Status, "")
		},
		ErrorLog: s.opt.ErrorLog,
	}
	defer func() {
		// ReverseProxy panics with http.ErrAbortHandler when the body
		// breaks off mid-copy; the request is still reported.
		p := recover()
		if p != nil && ex.Err == nil {
			ex.Err = errAborted
		}
		if cc, ok := ex.Conn.(*countConn); ok {
			ex.Up, ex.Down = cc.up.Load()-mark[0], cc.down.Load()-mark[1]
			ex.Conn = cc.Conn
		}
		s.b.Forwarded(ex)
		if p != nil {
			panic(p)
		}
	}()
	rp.ServeHTTP(w, r)
}

// errAborted: the response body broke off while it was being copied.
var errAborted = errors.New("response body copy aborted")

// viaFor is the Via entry for a request of r's protocol version.
func viaFor(r *http.Request) string {
	if r.ProtoMajor == 1 && r.ProtoMinor == 0 {
		return "1.0 ifsocks"
	}
	return Via
}

// transport returns the connection's Transport for user, made at its
// first request. Its upstream connections are this client connection's
// and this user's alone.
func (s *session) transport(user string) *http.Transport {
	if t := s.transports[user]; t != nil {
		return t
	}
	t := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			c, err := s.b.Dial(ctx, user, addr)
			if err != nil {
				return nil, err
			}
			return &countConn{Conn: c}, nil
		},
		// The client asked for what it asked for: no Accept-Encoding
		// added, no HTTP/2 (whose connections would be shared by
		// design), no proxy of the environment.
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       s.opt.IdleTimeout,
		ExpectContinueTimeout: time.Second,
	}
	if s.transports == nil {
		s.transports = make(map[string]*http.Transport)
	}
	s.transports[user] = t
	return t
}

// countConn counts the bytes of an upstream connection, so that each
// request can be given its share.
type countConn struct {
	net.Conn
	up, down atomic.Int64
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.down.Add(int64(n))
	return n, err
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.up.Add(int64(n))
	return n, err
}

// Upstream returns the connection the core's Dial returned.
func (c *countConn) Upstream() net.Conn { return c.Conn }
