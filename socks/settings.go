package socks

import (
	"context"
	"net/netip"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/metrics"
	"github.com/ifsocks/ifsocks/policy"
)

// User is what the server knows of an authenticated user besides the
// password: where its flows leave.
type User struct {
	// Egress is where the user's flows leave; when zero, the listener's
	// egress applies.
	Egress Egress
	// MaxAssociations overrides UDPSettings.MaxAssociations when > 0.
	MaxAssociations int
	// MaxConnections caps the user's concurrent flows (CONNECT tunnels
	// and UDP associations); 0 means no cap. Over it: reply 0x02.
	MaxConnections int
	// Rate paces the user's traffic; the zero value leaves it unpaced.
	Rate Rate
	// Account counts the user's traffic and holds its quota; nil when
	// accounting is off. It is the same counter in every Settings, so
	// counts and quotas carry across reloads.
	Account *accounting.Counter
}

// ReplyFilter says which datagrams from the network a UDP association
// passes back to its client; config parses it.
type ReplyFilter = config.ReplyFilter

// The reply filters; the zero value is FilterAddressPort.
const (
	FilterAddressPort = config.ReplyAddressPort
	FilterAddress     = config.ReplyAddress
	FilterNone        = config.ReplyNone
)

// UDPSettings govern UDP ASSOCIATE (RFC 1928 section 7).
type UDPSettings struct {
	// PortMin..PortMax is the range for client-facing relay sockets;
	// zero means a port from the kernel.
	PortMin, PortMax uint16
	// Advertise, when valid, is sent as BND.ADDR instead of the relay
	// socket's address (for hosts behind 1:1 NAT).
	Advertise netip.Addr
	// MaxAssociations caps concurrent associations per user, or per
	// client IP without authentication.
	MaxAssociations int
	// MaxDatagram is the largest payload relayed either way.
	MaxDatagram int
	ReplyFilter ReplyFilter
	// RequirePort refuses requests with DST.PORT 0 (reply 0x02): such an
	// association would take the port of the first datagram from the
	// client's IP, whoever sends it.
	RequirePort bool
}

// Settings are the server's rules. A Settings value must not be modified
// once passed to the server; replace it with Server.Update.
type Settings struct {
	// Auth verifies credentials. Nil or empty means no authentication
	// (method 0x00); otherwise only username/password (0x02) is accepted.
	Auth *auth.Store
	// Users maps a user name to its egress. Every name Auth accepts must
	// be present.
	Users map[string]User
	// Backend, when set, authenticates the names Users lacks.
	Backend Backend
	// NoAuthUser is the egress of flows without authentication on a
	// listener that has no Listener entry.
	NoAuthUser User
	// Listeners holds the settings of listeners served with
	// Server.ServeListener, by the name given there.
	Listeners map[string]*Listener
	Policy    *policy.Policy
	// Protocols are what listeners without their own serve; zero means
	// SOCKS5 only.
	Protocols Protocols

	// Metrics records what the server does; nil records nothing. It is
	// the same object in every Settings of a server.
	Metrics *metrics.Metrics
	// CheckInterface tells, before anything is resolved or dialled,
	// whether an egress interface is usable: nil, or a *bind.Error
	// wrapping bind.ErrNoInterface or bind.ErrInterfaceDown. Nil means
	// bind.CheckInterface (one ioctl per flow); the daemon passes the
	// state its netlink watcher keeps.
	CheckInterface func(name string) error
	// AddrOwner returns the interface holding a local address, for
	// ingress and source-address egress. Nil means bind.AddrOwner (a
	// netlink dump per flow); the daemon passes its netlink watcher's.
	AddrOwner func(netip.Addr) (string, bool)
	// IsLocal tells whether the host takes an address as its own
	// (assigned, or inside a local route), for source pools bound with
	// FREEBIND. Nil means bind.IsLocal; each pool entry caches the
	// answer for a short while (source.Pool.Local).
	IsLocal func(netip.Addr) bool

	HandshakeTimeout time.Duration // greeting to request, inclusive
	ConnectTimeout   time.Duration // resolution plus connect
	BindTimeout      time.Duration // BIND: wait for the peer's connection; 0 disables
	IdleTimeout      time.Duration // 0 disables
	// TCPKeepAlive is the keepalive idle time and probe interval of
	// relayed TCP sockets and UDP control connections; 0 leaves
	// keepalive off.
	TCPKeepAlive time.Duration

	UDP UDPSettings

	// Limits are the server's abuse limits (limits.go).
	Limits Limits

	sessions sessionIndex // pool.go
}

// Backend authenticates users that Settings.Users does not hold against a
// service (an HTTP hook, a directory) whose answer says where their flows
// leave. The daemon builds it from auth.Remote.
type Backend interface {
	// Authenticate returns the user's settings, or an error wrapping
	// auth.ErrBadCredentials (refused) or auth.ErrUnavailable (no usable
	// answer). The returned User is shared and must not be modified.
	Authenticate(ctx context.Context, req auth.Request) (*User, error)
	// Cached returns the settings of a login accepted and still cached,
	// without asking the backend.
	Cached(user, password string) (*User, bool)
}

// authenticates reports whether clients must log in.
func (st *Settings) authenticates() bool {
	return st.Backend != nil || (st.Auth != nil && st.Auth.Len() > 0)
}

// Listener is how one listener serves its clients.
type Listener struct {
	// Name is the listener's name in log lines (listener_name); may be
	// empty.
	Name string
	// NoAuth serves clients without authentication, even when Auth has
	// users; their flows leave by Egress.
	NoAuth bool
	// AllowClients, when not empty, are the only client addresses served;
	// others are closed at accept.
	AllowClients []netip.Prefix
	// Egress applies to the listener's flows without authentication, and
	// to users whose own Egress is zero.
	Egress Egress
	// Account counts the listener's flows without authentication; nil
	// when accounting is off.
	Account *accounting.Counter
	// Protocols are the protocols served; zero means Settings.Protocols.
	Protocols Protocols
}

// allows reports whether client may use the listener.
func (l *Listener) allows(client netip.Addr) bool {
	if l == nil || len(l.AllowClients) == 0 {
		return true
	}
	for _, p := range l.AllowClients {
		if p.Contains(client) {
			return true
		}
	}
	return false
}

func (st *Settings) checkInterface(name string) error {
	switch {
	case name == "":
		return nil
	case st.CheckInterface != nil:
		return st.CheckInterface(name)
	}
	return bind.CheckInterface(name)
}
