package nstest

import "syscall"

// childAttr makes the kernel kill a command when the test process dies.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
