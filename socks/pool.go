package socks

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/source"
)

// flowID is whose flow an egress plan is for: the user (authenticated
// name, without a session suffix) and the session key ("" without one).
type flowID struct {
	user    string
	session string
}

// seed is the pool seed of id's flow under eg's rotation.
func (eg *Egress) seed(id flowID) source.Seed {
	switch {
	case eg.Rotation == config.RotationUser && id.user != "":
		return source.KeySeed(id.user, "")
	case eg.Rotation == config.RotationSession && id.session != "":
		return source.KeySeed(id.user, id.session)
	}
	return source.FlowSeed()
}

// planPool picks the flow's source addresses, one per family the pool has,
// and the interface they leave by: the egress's interface when it names
// one (the addresses may then be a prefix routed to the host and held by no
// interface, bound with FREEBIND, as long as a local route covers them),
// else the interface holding the picked addresses.
func (st *Settings) planPool(eg *Egress, id flowID) (bind.Dialer, error) {
	d := bind.Dialer{Mark: eg.Mark}
	fixed := len(eg.Interfaces) == 1
	if fixed {
		d.Interface, d.FreeBind = eg.Interfaces[0], true
	}
	seed := eg.seed(id)
	var now time.Time
	for _, is4 := range [2]bool{true, false} {
		a, i := eg.Sources.Pick(is4, seed)
		if !a.IsValid() {
			continue
		}
		if fixed {
			if now.IsZero() {
				now = time.Now()
			}
			if !eg.Sources.Local(a, i, now, st.isLocal) {
				return d, &bind.Error{Interface: d.Interface, Err: fmt.Errorf("source %s (source_ips %s): %w",
					a, eg.Sources.Entry(is4, i), bind.ErrNoLocalRoute)}
			}
		} else {
			name, ok := st.addrOwner(a)
			switch {
			case !ok:
				return d, &bind.Error{Err: fmt.Errorf("source %s: %w", a, bind.ErrNoSource)}
			case d.Interface != "" && name != d.Interface:
				return d, &bind.Error{Interface: name, Err: fmt.Errorf("source_ips: %s is on %s, %s on %s: %w",
					d.Source4, d.Interface, a, name, bind.ErrPoolSpread)}
			}
			d.Interface = name
		}
		d = d.WithSource(a)
	}
	if err := st.checkInterface(d.Interface); err != nil {
		return d, err
	}
	return d, nil
}

func (st *Settings) isLocal(a netip.Addr) bool {
	if st.IsLocal != nil {
		return st.IsLocal(a)
	}
	return bind.IsLocal(a)
}

// sessionIndex lists the distinct session separators of the users and
// listeners with session rotation, computed once per Settings at the first
// login that needs it.
type sessionIndex struct {
	once sync.Once
	seps []string
}

func (st *Settings) sessionSeparators() []string {
	st.sessions.once.Do(func() {
		add := func(eg *Egress) {
			if eg.Rotation == config.RotationSession && eg.Sources != nil && !slices.Contains(st.sessions.seps, eg.SessionSeparator) {
				st.sessions.seps = append(st.sessions.seps, eg.SessionSeparator)
			}
		}
		for _, u := range st.Users {
			add(&u.Egress)
		}
		for _, l := range st.Listeners {
			add(&l.Egress)
		}
	})
	return st.sessions.seps
}

// splitSession splits a login name "USER<sep>KEY" into the user and the
// session key, when USER is a user whose flows (on listener lis) use
// session rotation with that separator and KEY is not empty. A name that
// is itself a user, or does not split so, is returned whole with no key:
// a name containing a separator is just a name elsewhere. Of several
// splits, the longest user name wins.
func (st *Settings) splitSession(lis *Listener, name string) (user, key string) {
	user = name
	if _, ok := st.Users[name]; ok {
		return user, ""
	}
	best := 0 // length of the longest user name found
	for _, sep := range st.sessionSeparators() {
		// From the last occurrence back: the first match is this
		// separator's longest user name.
		for i := strings.LastIndex(name, sep); i > best; i = strings.LastIndex(name[:i], sep) {
			u, k := name[:i], name[i+len(sep):]
			if k == "" {
				continue
			}
			if eg, ok := st.userEgress(lis, u); ok && eg.Rotation == config.RotationSession && eg.Sources != nil && eg.SessionSeparator == sep {
				user, key, best = u, k, i
				break
			}
		}
	}
	return user, key
}

// userEgress is the egress of user name's flows on listener lis: its own,
// or the listener's when its own is zero.
func (st *Settings) userEgress(lis *Listener, name string) (*Egress, bool) {
	u, ok := st.Users[name]
	if !ok {
		return nil, false
	}
	if u.Egress.IsZero() && lis != nil {
		return &lis.Egress, true
	}
	return &u.Egress, true
}
