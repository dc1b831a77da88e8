package config

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
)

// limits checks the [server] abuse limits.
func (v *validator) limits(s *Server, f *file) {
	nonNegative := func(key string, n int, dst *int) {
		if !f.defined("server", key) {
			return
		}
		if n < 0 {
			v.add("server."+key, strconv.Itoa(n), "must be 0 (no limit) or more")
			return
		}
		*dst = n
	}
	nonNegative("max_handshakes_per_ip", f.Server.MaxHandshakesPerIP, &s.MaxHandshakesPerIP)
	nonNegative("max_handshakes", f.Server.MaxHandshakes, &s.MaxHandshakes)
	nonNegative("auth_fail_limit", f.Server.AuthFailLimit, &s.AuthFailLimit)
	s.AuthFailLimitIP = DefaultAuthFailLimitIPFactor * s.AuthFailLimit
	nonNegative("auth_fail_limit_ip", f.Server.AuthFailLimitIP, &s.AuthFailLimitIP)
	nonNegative("max_connections", f.Server.MaxConnections, &s.MaxConnections)
	v.duration(f, "auth_fail_window", f.Server.AuthFailWindow, &s.AuthFailWindow, false)
	v.duration(f, "auth_fail_cooldown", f.Server.AuthFailCooldown, &s.AuthFailCooldown, false)
}

// userLimits checks a [[users]] entry's max_connections, rate_limit and
// rate_burst into u. A rate_limit of 0 means no limit. A burst must hold
// the largest UDP datagram, or such datagrams could never pass the user's
// limiter.
func (v *validator) userLimits(key func(string) string, u *User, fu fileUser, s *Server) {
	if fu.MaxConnections < 0 {
		v.add(key("max_connections"), strconv.Itoa(fu.MaxConnections), "must be 0 (no limit) or more")
	}
	u.MaxConnections = max(fu.MaxConnections, 0)
	if fu.RateLimit != nil {
		n, err := parseByteSize(fu.RateLimit)
		if err != nil {
			v.add(key("rate_limit"), fmt.Sprint(fu.RateLimit), "bytes per second: "+err.Error())
			return
		}
		u.RateLimit = n
	}
	if fu.RateBurst == nil {
		if u.RateLimit > 0 {
			u.RateBurst = DefaultRateBurst(u.RateLimit)
		}
		return
	}
	n, err := parseByteSize(fu.RateBurst)
	switch {
	case err != nil:
		v.add(key("rate_burst"), fmt.Sprint(fu.RateBurst), "bytes: "+err.Error())
	case u.RateLimit == 0:
		v.add(key("rate_burst"), fmt.Sprint(fu.RateBurst), "set only together with a non-zero rate_limit")
	case n < int64(s.UDPMaxDatagram):
		v.add(key("rate_burst"), fmt.Sprint(fu.RateBurst),
			fmt.Sprintf("must be at least server.udp_max_datagram (%d), or larger datagrams could never pass", s.UDPMaxDatagram))
	default:
		u.RateBurst = n
	}
}

// byteSize is an integer followed by an optional unit; nothing else, not
// even spaces, so that a typo is an error rather than a different number.
var byteSize = regexp.MustCompile(`^([0-9]+)(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$`)

var byteUnits = map[string]int64{
	"": 1, "B": 1,
	"kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
}

// maxByteSize bounds sizes far above any NIC (1 TiB), so that products
// never overflow.
const maxByteSize = 1 << 40

// maxQuota bounds a quota (1 PiB per period): far above what one host
// moves in a month, far below an overflow.
const maxQuota = 1 << 50

// parseByteSize accepts a TOML integer (bytes) or a string such as
// "1048576", "500kB" or "10MiB" and returns the number of bytes.
func parseByteSize(raw any) (int64, error) { return parseSize(raw, maxByteSize) }

// parseSize is parseByteSize with limit as the largest size accepted.
func parseSize(raw any, limit int64) (int64, error) {
	const want = `want an integer or a string like "10MiB" (units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)`
	var n int64
	switch x := raw.(type) {
	case int64:
		n = x
	case string:
		m := byteSize.FindStringSubmatch(x)
		if m == nil {
			return 0, fmt.Errorf("%s", want)
		}
		d, err := strconv.ParseInt(m[1], 10, 64)
		unit := byteUnits[m[2]]
		if err != nil || d > math.MaxInt64/unit {
			return 0, tooLarge(limit)
		}
		n = d * unit
	default:
		return 0, fmt.Errorf("%s", want)
	}
	switch {
	case n < 0:
		return 0, fmt.Errorf("must not be negative")
	case n > limit:
		return 0, tooLarge(limit)
	}
	return n, nil
}

func tooLarge(limit int64) error {
	if limit == maxQuota {
		return fmt.Errorf("too large (at most 1024TiB)")
	}
	return fmt.Errorf("too large (at most 1TiB)")
}
