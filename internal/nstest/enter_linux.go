//go:build linux

package nstest

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Enter runs fn on an OS thread moved into the network namespace name
// (as `ip netns` knows it) and returns fn's error, or why the thread could
// not be moved.
//
// A namespace belongs to a thread, not to a goroutine, and the Go runtime
// moves goroutines between threads, so: fn runs on a goroutine of its own,
// locked to its thread for the whole switch. After fn the thread goes back
// to the namespace it came from and is unlocked for reuse. If going back
// fails, the thread stays locked and the runtime destroys it when the
// goroutine ends, so no other goroutine ever runs in the namespace by
// accident. Sockets fn creates stay in the namespace whichever thread uses
// them later; goroutines fn starts run on other threads, outside it, and
// so does name resolution (use IP literals).
func Enter(name string, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- enter(name, fn) }()
	return <-done
}

func enter(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own network namespace: %w", err)
	}
	defer unix.Close(orig)
	target, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open network namespace %s: %w", name, err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", name, err)
	}
	fnErr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// Stay locked: the thread dies with this goroutine.
		return fmt.Errorf("setns back from %s: %w (fn: %v)", name, err, fnErr)
	}
	runtime.UnlockOSThread()
	return fnErr
}
