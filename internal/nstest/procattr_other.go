//go:build !linux

package nstest

import "syscall"

func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
