// Package httpproxy is the HTTP proxy protocol of ifsocks: it serves one
// client connection that the server core has already accepted, sniffed and
// found to speak HTTP. It handles CONNECT tunnels, absolute-form requests
// forwarded to the origin (any method, bodies, streaming, WebSocket
// upgrades), Basic proxy authentication and the HTTP status of every
// refusal, all with net/http: the server side runs net/http's server over
// the one connection, forwarding runs httputil.ReverseProxy over a
// Transport whose dialer is the core's.
//
// It does not decide anything about users, egress, policy, limits, relays
// or flow records: those are the core's (package socks), reached through
// Backend, so that every protocol takes the same path.
//
// It is part of the ifsocks program, not a public API: exported names
// serve the other packages of this module and change with them.
package httpproxy

import (
	"context"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// MaxHeaderBytes bounds a request head (request line and headers); a
// larger one gets 431.
const MaxHeaderBytes = 16 << 10

// serverSlack is what net/http's server reads beyond MaxHeaderBytes before
// it gives up (its initial buffer, net/http/server.go); subtracted so the
// bound above is the one the client meets.
const serverSlack = 4096

// Realm is the realm of the Basic challenge.
const Realm = "ifsocks"

// Options are the settings of one served connection.
type Options struct {
	// HeaderTimeout bounds the reading of each request head.
	HeaderTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a kept-alive
	// connection; 0 waits without bound.
	IdleTimeout time.Duration
	// AuthRequired makes every request need Proxy-Authorization.
	AuthRequired bool
	// ErrorLog receives net/http's own complaints (malformed requests
	// and the like); nil discards them.
	ErrorLog *log.Logger
}

// Reply answers one request for the core.
type Reply interface {
	// Refuse answers with status and a one-line body, which ends with
	// hint when it is not empty ("403 Forbidden: quota exceeded").
	Refuse(status int, hint string)
	// Establish answers a CONNECT with 200 and takes the connection
	// from the HTTP server; it returns the bytes the client sent after
	// its request head, which belong to the tunnel.
	Establish() (early []byte, err error)
}

// Backend is the server core as one client connection sees it. Its
// methods are called from the connection's request handling, one request
// at a time, except Dial, which the forwarding Transport calls.
type Backend interface {
	// Started is called when a request head has been read.
	Started()
	// Login checks Basic credentials; an error means 407.
	Login(user, pass string) error
	// Connect serves CONNECT to target ("host:port") for user ("" without
	// authentication) and answers through rep. It reports whether a
	// relay now owns the connection.
	Connect(user, target string, rep Reply) (handedOff bool)
	// Admit is asked before a request to target ("host:port") is
	// forwarded; when it returns false it has answered through rep.
	Admit(user, target, method string, rep Reply) bool
	// Dial opens an upstream connection for user's forwarded requests.
	Dial(ctx context.Context, user, addr string) (net.Conn, error)
	// Status is the HTTP status for an error of Dial or of forwarding.
	Status(err error) int
	// Forwarded reports a forwarded request's end.
	Forwarded(ex *Exchange)
	// Idle is called when the connection waits for its next request,
	// its answers all sent: it carries no flow now.
	Idle()
}

// Exchange is one forwarded request, for the flow record.
type Exchange struct {
	User   string
	Method string
	Target string // host:port
	Start  time.Time
	Status int
	// Conn is the upstream connection the request used (as Dial returned
	// it); nil when none was reached.
	Conn net.Conn
	// Up and Down are the bytes written to and read from Conn for this
	// request (request and response, heads included).
	Up, Down int64
	// Err is why forwarding failed, if it did.
	Err error
}

// Serve serves proxy requests on c until the client closes it, a timeout
// ends it, or a CONNECT hands it to a relay. early are bytes already read
// from c (the sniffed first ones). It reports whether the connection was
// handed off; if not, c is closed when Serve returns. Every goroutine it
// starts has ended by then.
func Serve(c net.Conn, early []byte, opt Options, b Backend) (handedOff bool) {
	if opt.ErrorLog == nil {
		opt.ErrorLog = log.New(discard{}, "", 0)
	}
	s := &session{b: b, opt: opt}
	pc := &prefixConn{Conn: c, buf: early}
	if s.firstConnect(pc) {
		return true
	}
	if pc.closed {
		return false
	}
	ln := &connListener{c: pc, done: make(chan struct{})}
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: opt.HeaderTimeout,
		IdleTimeout:       opt.IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes - serverSlack,
		ErrorLog:          opt.ErrorLog,
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateClosed, http.StateHijacked:
				ln.Close()
			case http.StateIdle:
				b.Idle()
			}
		},
	}
	srv.Serve(ln) // returns once the connection is closed or hijacked
	s.wg.Wait()
	s.closeTransports()
	return s.handedOff.Load()
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// session is one client connection's state.
type session struct {
	b   Backend
	opt Options
	wg  sync.WaitGroup // the handler running, if any

	handedOff atomic.Bool

	// transports are the connection's upstream pools, one per user: an
	// upstream connection serves only the user (and client connection)
	// that opened it. Only the handler goroutine touches the map.
	transports map[string]*http.Transport
}

func (s *session) closeTransports() {
	for _, t := range s.transports {
		t.CloseIdleConnections()
	}
}
