//go:build !linux

package nstest

import "syscall"

func ChildAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
