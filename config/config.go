// Package config loads and validates the ifsocks TOML configuration.
//
// It owns the file format: key names, defaults and every rule that can be
// checked without touching the network. It does not look at the host's
// interfaces (a configured interface may appear later) and it does not build
// servers; the daemon package turns a Config into running parts.
//
// It is part of the ifsocks program, not a public API: exported names
// serve the other packages of this module and change with them.
package config

import (
	"net/netip"
	"slices"
	"time"
)

// Defaults, applied in one place (applyDefaults) and documented in
// config.toml.example, which a test loads.
const (
	DefaultListen           = "127.0.0.1:1080"
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultIdleTimeout      = 5 * time.Minute
	DefaultConnectTimeout   = 10 * time.Second
	DefaultShutdownTimeout  = 30 * time.Second
	DefaultBindTimeout      = time.Minute
	// MaxTCPKeepAlive is the largest TCP_KEEPIDLE Linux accepts.
	MaxTCPKeepAlive        = 32767 * time.Second
	DefaultMaxAssociations = 64
	DefaultUDPMaxDatagram  = 8192
	DefaultUDPReplyFilter  = ReplyAddressPort
	// DefaultUDPRequirePort is off: many clients (curl, most libraries)
	// send DST.PORT 0 because they learn their own port only later.
	DefaultUDPRequirePort = false
	DefaultLogLevel       = "info"
	DefaultLogFormat      = "json"
	// DefaultPath is read when no -config flag is given and the file exists.
	DefaultPath = "/etc/ifsocks/config.toml"
)

// Defaults of the abuse limits; config.toml.example says why these values.
const (
	// DefaultMaxHandshakesPerIP is well above legitimate bursts (a
	// connection pool or a NAT gateway opening dozens at once, whose
	// handshakes all wait for the first bcrypt) and still bounds one
	// client to a tiny share of the descriptors for handshake_timeout.
	DefaultMaxHandshakesPerIP = 128
	// MaxHandshakesFromNoFile, the default of max_handshakes, has the
	// daemon derive the server-wide cap from its RLIMIT_NOFILE (at start
	// and at each reload): NoFileShareForHandshakes of it, so that
	// clients without credentials can never take the descriptors the
	// flows need.
	MaxHandshakesFromNoFile  = -1
	NoFileShareForHandshakes = 4 // a quarter
	DefaultAuthFailLimit     = 10
	// auth_fail_limit_ip, when unset, is this many times auth_fail_limit:
	// room for the typos of several users behind one address (an office
	// NAT) before all of them are locked out, while guessing across many
	// names from one address still stops soon.
	DefaultAuthFailLimitIPFactor = 5
	DefaultAuthFailWindow        = time.Minute
	DefaultAuthFailCooldown      = 5 * time.Minute
	// DefaultMaxConnections 0 means no server-wide cap on flows: the
	// real bound is the descriptor limit (LimitNOFILE), which the
	// operator sizes for the host; a built-in number would either cut a
	// busy server or sit above that limit and do nothing.
	DefaultMaxConnections = 0
	// A [[users]] rate_burst left unset is DefaultRateBurstTime of the
	// rate, but at least DefaultRateBurstMin: small enough that a flow
	// cannot exceed the rate for long, large enough that bulk data still
	// moves in splice-sized chunks and any UDP datagram fits.
	DefaultRateBurstTime = 100 * time.Millisecond
	DefaultRateBurstMin  = 64 << 10
)

// DefaultDeny is the destination deny list used when [server] deny is not
// set. The policy also judges the IPv4 address inside IPv4-mapped, NAT64
// and 6to4 addresses against it (package policy), so each IPv4 entry
// covers those forms too. Each entry says where it comes from.
var DefaultDeny = []netip.Prefix{
	// Loopback (RFC 1122 section 3.2.1.3, RFC 4291 section 2.5.3).
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	// "This network" and the unspecified address, which Linux connects
	// to the host itself (RFC 1122 section 3.2.1.3, RFC 4291 2.5.2).
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("::/128"),
	// Link-local (RFC 3927, RFC 4291 section 2.5.6). It holds the
	// metadata service at 169.254.169.254 of AWS ("Retrieve instance
	// metadata", Amazon EC2 User Guide), Google Cloud ("View and query VM
	// metadata", Compute Engine docs), Azure ("Azure Instance Metadata
	// Service", Microsoft Learn) and Oracle Cloud ("Getting Instance
	// Metadata", OCI docs).
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
	// AWS instance metadata over IPv6 ("Retrieve instance metadata",
	// Amazon EC2 User Guide: http://[fd00:ec2::254]/latest/meta-data/).
	netip.MustParsePrefix("fd00:ec2::254/128"),
	// Alibaba Cloud ECS metadata ("Overview of ECS instance metadata",
	// Alibaba Cloud docs; cloud-init's AliYun datasource:
	// http://100.100.100.200/).
	netip.MustParsePrefix("100.100.100.200/32"),
	// Azure WireServer ("What is IP address 168.63.129.16?", Microsoft
	// Learn): VM agent, DHCP, health probes, and Azure's DNS. Clients
	// cannot use Azure DNS through the proxy; the daemon's own lookups
	// do not go through the policy and are unaffected.
	netip.MustParsePrefix("168.63.129.16/32"),
	// Multicast (RFC 5771, RFC 4291 section 2.7): a proxy client has no
	// business joining the local segment's service discovery (mDNS,
	// SSDP, routing protocols) from the proxy host.
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("ff00::/8"),
}

// Config is a validated configuration.
type Config struct {
	// Source says where the configuration came from: a file path or
	// "built-in default". Only for logs.
	Source  string
	Server  Server
	Log     Log
	Metrics Metrics
	// Accounting is off when Accounting.Path is "".
	Accounting Accounting
	Users      []User
	// Listeners are the [[listeners]] entries: addresses with their own
	// authentication, client list and egress, served besides
	// Server.Listen.
	Listeners []Listener
	// Auth says where users not in Users are looked up.
	Auth Auth
}

// HasUsers reports whether clients authenticate: there are [[users]] or a
// backend that knows users.
func (c *Config) HasUsers() bool { return len(c.Users) > 0 || c.Auth.Remote() }

// Ingress, as an interface name, means the interface that holds the
// address the client connected to.
const Ingress = "ingress"

// Egress says where flows leave: by one interface, by one of several, by
// the interface a client came in on, or from a source address.
// At most one of Interface, Interfaces and SourceIP is set.
type Egress struct {
	// Interface is an interface name, Ingress, or "" for kernel routing.
	Interface string
	// Interfaces are several interfaces picked by Strategy.
	Interfaces []string
	// Strategy picks among Interfaces.
	Strategy Strategy
	// SourceIP is bound as the source address, on the interface that
	// holds it.
	SourceIP netip.Addr
	// Mark, when non-zero, is set as SO_MARK on every outbound socket.
	Mark uint32

	// SourceIPs is a pool of source addresses: single addresses as /32
	// or /128, and prefixes (source_ips.go). Each flow binds one address
	// of the pool, picked by Rotation, on Interface when set, else on the
	// interface holding the address.
	SourceIPs []netip.Prefix
	// Rotation picks the address of each flow from SourceIPs.
	Rotation Rotation
	// SessionSeparator splits a login name "USER<sep>KEY" into the user
	// and a session key; set when Rotation is RotationSession.
	SessionSeparator string
}

// IsZero reports whether e leaves everything to kernel routing.
func (e Egress) IsZero() bool {
	return e.Interface == "" && len(e.Interfaces) == 0 && !e.SourceIP.IsValid() && e.Mark == 0 && len(e.SourceIPs) == 0
}

// Names lists the interface names e may use (not Ingress, which is
// decided per flow).
func (e Egress) Names() []string {
	if e.Interface != "" && e.Interface != Ingress {
		return []string{e.Interface}
	}
	return e.Interfaces
}

// Listener is one [[listeners]] entry.
type Listener struct {
	// Address is "IP:port", canonical.
	Address string
	// Name labels the listener in logs (listener_name), unique among
	// [[listeners]]; empty when not set.
	Name string
	// NoAuth is auth = "none": no authentication, flows leave by Egress.
	// Otherwise clients authenticate as [[users]], and a user's own
	// egress wins over the listener's.
	NoAuth bool
	// AllowClients, when not empty, are the only client addresses
	// accepted.
	AllowClients []netip.Prefix
	// Protocols are the protocols served; [server] protocols when the
	// listener does not set its own.
	Protocols Protocols
	Egress
	// Quota caps the listener's unauthenticated flows (auth = "none"
	// only: users have their own).
	Quota Quota
}

// Metrics is the [metrics] table.
type Metrics struct {
	// Listen is the "IP:port" of the Prometheus /metrics and /healthz
	// endpoint; empty disables it.
	Listen string
}

// Server is the [server] table.
type Server struct {
	Listen []string
	// Protocols are the protocols served on Listen (and on [[listeners]]
	// that do not set their own).
	Protocols        Protocols
	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	ConnectTimeout   time.Duration
	ShutdownTimeout  time.Duration
	// BindTimeout is how long a BIND waits for the peer to connect.
	BindTimeout time.Duration
	// TCPKeepAlive, when not 0, turns on TCP keepalive on both sockets
	// of a relayed TCP flow and the control connection of a UDP
	// association: a probe after that much silence, then one every
	// TCPKeepAlive, and the connection ends after three unanswered.
	TCPKeepAlive time.Duration
	// Deny lists destination prefixes refused for every user.
	Deny []netip.Prefix
	// DenyOwnAddresses refuses destinations that are addresses of this
	// host, so the proxy cannot be used to reach services bound to them.
	DenyOwnAddresses bool
	// AllowOpen permits running without users on a non-loopback address.
	AllowOpen bool
	// ReloadClosesRemoved makes a reload close the running flows of users
	// it removes; by default they run on until they end.
	ReloadClosesRemoved bool

	// UDPPortMin and UDPPortMax bound the ports of client-facing UDP relay
	// sockets; both zero means a port from the kernel.
	UDPPortMin, UDPPortMax uint16
	// UDPAdvertise, when valid, replaces the relay address in UDP
	// ASSOCIATE replies (hosts behind 1:1 NAT).
	UDPAdvertise netip.Addr
	// MaxAssociations caps concurrent UDP associations per user (per
	// client IP without authentication).
	MaxAssociations int
	// UDPMaxDatagram is the largest payload relayed; larger ones are
	// dropped.
	UDPMaxDatagram int
	// UDPReplyFilter says which datagrams from the network go back to the
	// client.
	UDPReplyFilter ReplyFilter
	// UDPRequirePort refuses UDP ASSOCIATE requests whose DST.PORT is 0
	// (reply 0x02). Without it such an association takes the port of
	// the first datagram from the client's IP, which another program on
	// the client's host can send first.
	UDPRequirePort bool

	// MaxHandshakesPerIP caps the connections one client IP (IPv6: one
	// /64, and four times as many per /56) may have in their handshake at
	// once; 0 disables the cap.
	MaxHandshakesPerIP int
	// MaxHandshakes caps the connections of all clients in their
	// handshake; 0 disables the cap, MaxHandshakesFromNoFile derives it
	// from the descriptor limit.
	MaxHandshakes int
	// AuthFailLimit failed authentications from one client IP (IPv6: one
	// /64) with one user name within AuthFailWindow block that name's
	// attempts from that client for AuthFailCooldown; AuthFailLimitIP
	// failures with any names block the client. 0 disables each.
	AuthFailLimit    int
	AuthFailLimitIP  int
	AuthFailWindow   time.Duration
	AuthFailCooldown time.Duration
	// MaxConnections caps the server's concurrent flows (CONNECT tunnels
	// and UDP associations); 0 means no cap.
	MaxConnections int
}

// Log is the [log] table.
type Log struct {
	Level  string
	Format string
}

// User is one [[users]] entry. Exactly one of PasswordHash and Password is
// set.
type User struct {
	Name         string
	PasswordHash string
	Password     string
	Egress
	// MaxAssociations overrides Server.MaxAssociations when non-zero.
	MaxAssociations int
	// MaxConnections caps the user's concurrent flows; 0 means no cap.
	MaxConnections int
	// RateLimit is the user's bytes per second in each direction, shared
	// by all its flows; 0 means unlimited. RateBurst is the token bucket
	// size in bytes, set (to DefaultRateBurst) whenever RateLimit is.
	RateLimit int64
	RateBurst int64
	// Quota caps the user's traffic per period.
	Quota Quota
}

// DefaultRateBurst is the burst of a rate limit whose rate_burst is unset.
func DefaultRateBurst(rate int64) int64 {
	return max(rate*int64(DefaultRateBurstTime)/int64(time.Second), DefaultRateBurstMin)
}

// ListenAddresses lists every address to listen on: [server] listen and
// the [[listeners]].
func (c *Config) ListenAddresses() []string {
	out := slices.Clone(c.Server.Listen)
	for _, l := range c.Listeners {
		out = append(out, l.Address)
	}
	return out
}

// Default returns the built-in configuration used when no file is given:
// listen on loopback, no authentication, kernel routing.
func Default() *Config {
	c := &Config{Source: "built-in default"}
	applyDefaults(c, &file{})
	return c
}
