package nstest

import "syscall"

// ChildAttr makes the kernel kill a command when the test process dies
// (Linux; elsewhere it is empty).
func ChildAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
