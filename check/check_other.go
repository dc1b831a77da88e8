//go:build !linux

package check

import "errors"

// errNotSupported is returned off Linux: the check reads Linux netlink
// and /proc/sys, and the daemon itself needs SO_BINDTODEVICE.
var errNotSupported = errors.New("ifsocks -check is not supported on this OS (it reads Linux netlink and /proc)")

func systemHost() (host, error) { return nil, errNotSupported }
