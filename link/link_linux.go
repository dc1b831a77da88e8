package link

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Run follows netlink events until ctx ends. It lists the existing
// interfaces first. If the kernel drops the subscription (a burst of events
// overflows the socket), it subscribes again and relists, so no change is
// missed for good.
func (w *Watcher) Run(ctx context.Context) error {
	for {
		err := w.subscribe(ctx)
		if ctx.Err() != nil {
			return nil
		}
		w.log.Warn("netlink subscription lost; resubscribing", zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

func (w *Watcher) subscribe(ctx context.Context) error {
	done := make(chan struct{})
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	var (
		mu     sync.Mutex
		subErr error
	)
	onErr := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if subErr == nil {
			subErr = err
		}
	}
	lost := func(what string) error {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Errorf("%s: %v", what, subErr)
	}
	// The library's receive goroutines exit, closing their channels, once
	// done is closed; drain the channels so they are never left blocked
	// on a send.
	var linksOn, addrsOn bool
	defer func() {
		close(done)
		for linksOn {
			_, linksOn = <-links
		}
		for addrsOn {
			_, addrsOn = <-addrs
		}
	}()
	// Not ListExisting: the library sends that dump request addressed to
	// the multicast groups it subscribed, which the kernel refuses with
	// EPERM to a process without CAP_NET_ADMIN, as the systemd unit and
	// the package run it. The state is listed by Prime instead, after
	// subscribing, so that no change falls between the list and the
	// events (a change listed and then seen again as an event is applied
	// twice, which is harmless).
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to address events: %w", err)
	}
	addrsOn = true
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to link events: %w", err)
	}
	linksOn = true
	if err := w.Prime(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-links:
			if !ok {
				linksOn = false
				return lost("link events")
			}
			w.link(u)
		case a, ok := <-addrs:
			if !ok {
				addrsOn = false
				return lost("address events")
			}
			if ip, ok := netip.AddrFromSlice(a.LinkAddress.IP); ok {
				w.addr(a.LinkIndex, ip, a.NewAddr)
			}
		}
	}
}

func (w *Watcher) link(u netlink.LinkUpdate) {
	attrs := u.Link.Attrs()
	if u.Header.Type == unix.RTM_DELLINK {
		w.update(attrs.Index, "", Missing)
		return
	}
	st := Down
	// IFF_RUNNING is the kernel's "operationally up": carrier present.
	if attrs.Flags&net.FlagUp != 0 && attrs.RawFlags&unix.IFF_RUNNING != 0 {
		st = Up
	}
	w.update(attrs.Index, attrs.Name, st)
}

// Prime lists the interfaces once, synchronously, so that State answers
// correctly before Run's subscription has delivered anything.
func (w *Watcher) Prime() error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list interfaces: %w", err)
	}
	for _, l := range links {
		w.link(netlink.LinkUpdate{Link: l})
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			w.addr(a.LinkIndex, ip, true)
		}
	}
	w.primed.Store(true)
	return nil
}
