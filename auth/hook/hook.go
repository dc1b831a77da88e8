// Package hook asks an HTTP service whether a login is valid and where the
// user's flows leave: ifsocks' [auth] backend = "http".
//
// Each login the cache cannot answer is POSTed as JSON
// ({"user","password","client","listener","protocol"}) to the configured
// URL, over TCP or a unix socket. The answer is 200 with
// {"allow": true|false, "egress": {...}}, where egress holds [[users]] keys;
// 401 and 403 are refusals too, any other status is a failure. The package
// only speaks the protocol: validating the egress and caching are
// auth.Remote's and config's jobs, and it is not a public API.
package hook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ifsocks/ifsocks/auth"
)

// maxAnswer bounds the answer read: an egress is a few hundred bytes, and
// a hook answering megabytes is broken.
const maxAnswer = 64 << 10

// Options configure a Client.
type Options struct {
	// URL is where requests go; with Socket, only its path counts.
	URL string
	// Socket, when set, is a unix socket to connect to instead of the
	// URL's host.
	Socket  string
	Timeout time.Duration
	Headers map[string]string
	// TokenFile holds a bearer token for the Authorization header; it is
	// read once, by New.
	TokenFile string
	// MaxConns bounds the connections kept open to the hook.
	MaxConns int
}

// Client is an auth.Backend that asks an HTTP hook.
type Client struct {
	url     string
	header  http.Header
	tr      *http.Transport
	hc      *http.Client
	retired atomic.Bool // Close was called: no more idle connections kept
}

// New returns a client for o, reading o.TokenFile.
func New(o Options) (*Client, error) {
	h := http.Header{"Content-Type": {"application/json"}, "User-Agent": {"ifsocks"}}
	for k, v := range o.Headers {
		h.Set(k, v)
	}
	if o.TokenFile != "" {
		b, err := os.ReadFile(o.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("auth.http.token_file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" || strings.ContainsAny(tok, "\r\n") {
			return nil, fmt.Errorf("auth.http.token_file: %s: want one line holding the token", o.TokenFile)
		}
		h.Set("Authorization", "Bearer "+tok)
	}
	tr := &http.Transport{
		// The hook is one service: keep as many connections open as
		// requests may run, so a burst does not open new ones each time.
		MaxIdleConnsPerHost: max(o.MaxConns, 2),
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	if o.Socket != "" {
		var d net.Dialer
		sock := o.Socket
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", sock)
		}
	} else {
		tr.Proxy = nil // the hook is never reached through a proxy
		tr.DialContext = (&net.Dialer{Timeout: o.Timeout}).DialContext
	}
	return &Client{url: o.URL, header: h, tr: tr, hc: &http.Client{Transport: tr, Timeout: o.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}, nil
}

// answer is the hook's JSON answer.
type answer struct {
	Allow  *bool          `json:"allow"`
	Egress map[string]any `json:"egress"`
}

// Lookup asks the hook about req.
func (c *Client) Lookup(ctx context.Context, req auth.Request) (auth.Answer, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return auth.Answer{}, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return auth.Answer{}, err
	}
	hr.Header = c.header.Clone()
	hr.Close = c.retired.Load()
	resp, err := c.hc.Do(hr)
	if err != nil {
		return auth.Answer{}, fmt.Errorf("auth hook: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized, http.StatusForbidden:
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
		return auth.Answer{}, nil
	default:
		return auth.Answer{}, fmt.Errorf("auth hook: status %s", resp.Status)
	}
	return decode(io.LimitReader(resp.Body, maxAnswer+1))
}

// decode reads an answer strictly: unknown fields, a missing allow or
// trailing data are failures of the hook, not refusals.
func decode(r io.Reader) (auth.Answer, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return auth.Answer{}, fmt.Errorf("auth hook: read answer: %w", err)
	}
	if len(data) > maxAnswer {
		return auth.Answer{}, fmt.Errorf("auth hook: answer longer than %d bytes", maxAnswer)
	}
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	d.DisallowUnknownFields()
	var a answer
	if err := d.Decode(&a); err != nil {
		return auth.Answer{}, fmt.Errorf("auth hook: answer: %w", err)
	}
	if d.More() {
		return auth.Answer{}, errors.New("auth hook: answer: data after the JSON object")
	}
	if a.Allow == nil {
		return auth.Answer{}, errors.New(`auth hook: answer: no "allow"`)
	}
	return auth.Answer{Allow: *a.Allow, Fields: a.Egress}, nil
}

// Close lets go of idle connections; a request still running afterwards
// (a login that began before a reload) closes its connection when done.
func (c *Client) Close() error {
	c.retired.Store(true)
	c.tr.CloseIdleConnections()
	return nil
}

// Probe connects to the hook once, without a request, for -check.
func (c *Client) Probe(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.hc.Timeout)
	defer cancel()
	u, err := url.Parse(c.url)
	if err != nil {
		return "", err
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	addr := net.JoinHostPort(u.Hostname(), port)
	conn, err := c.tr.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("auth hook: %w", err)
	}
	conn.Close()
	return "connects", nil
}
