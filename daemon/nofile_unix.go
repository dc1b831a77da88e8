//go:build unix

package daemon

import "syscall"

// noFileLimit is the process's soft RLIMIT_NOFILE, 0 if unknown.
func noFileLimit() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return lim.Cur
}
