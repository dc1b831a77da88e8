//go:build linux

package test

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// A cgroup whose sockets are bound to a device from birth: the one case
// where, on Linux >= 5.7, SO_BINDTODEVICE still needs CAP_NET_RAW. The
// kernel lets an unprivileged process set it only while the socket is not
// yet bound to a device (net/core/sock.c, sock_bindtoindex_locked). `ip vrf
// exec` creates exactly such sockets, with a BPF_CGROUP_INET_SOCK_CREATE
// program that sets bound_dev_if; this kernel has no VRF driver, so the
// tests attach the same kind of program themselves.

// preboundCgroup creates a cgroup v2 group in which the kernel binds every
// new IPv4/IPv6 socket to dev of namespace ns, and returns the path of its
// cgroup.procs. The group is removed at the end of the test; register the
// cleanup of processes moved into it after calling this.
func preboundCgroup(t *testing.T, ns, dev string) string {
	t.Helper()
	var ifindex int
	if err := nstest.Enter(ns, func() error {
		ifi, err := net.InterfaceByName(dev)
		if err == nil {
			ifindex = ifi.Index
		}
		return err
	}); err != nil {
		t.Fatalf("%s in %s: %v", dev, ns, err)
	}
	mnt, err := cgroup2Mount()
	if err != nil {
		mnt = mountCgroup2(t)
	}
	dir := filepath.Join(mnt, fmt.Sprintf("%s%d-%d-prebound", privPrefix, os.Getpid(), privSeq.Add(1)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The group is busy until its last process has been reaped.
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := unix.Rmdir(dir)
			if err == nil || errors.Is(err, unix.ENOENT) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("removing cgroup %s: %v", dir, err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	prog, err := loadBindDevProg(ifindex)
	if err != nil {
		t.Fatalf("loading the socket-create BPF program: %v", err)
	}
	// The attachment holds the program; removing the group releases it.
	defer unix.Close(prog)
	cg, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cg)
	// union bpf_attr, the BPF_PROG_ATTACH part.
	var attr [16]byte
	binary.LittleEndian.PutUint32(attr[0:], uint32(cg))   // target_fd
	binary.LittleEndian.PutUint32(attr[4:], uint32(prog)) // attach_bpf_fd
	binary.LittleEndian.PutUint32(attr[8:], unix.BPF_CGROUP_INET_SOCK_CREATE)
	if _, _, e := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_ATTACH, uintptr(unsafe.Pointer(&attr[0])), uintptr(len(attr))); e != 0 {
		t.Fatalf("BPF_PROG_ATTACH to %s: %v", dir, e)
	}
	return filepath.Join(dir, "cgroup.procs")
}

// bpfInsn encodes one eBPF instruction (struct bpf_insn, little endian:
// destination register in the low nibble of the second byte).
func bpfInsn(code byte, dst, src uint8, off int16, imm int32) []byte {
	b := make([]byte, 8)
	b[0], b[1] = code, dst|src<<4
	binary.LittleEndian.PutUint16(b[2:], uint16(off))
	binary.LittleEndian.PutUint32(b[4:], uint32(imm))
	return b
}

// loadBindDevProg loads a BPF_PROG_TYPE_CGROUP_SOCK program that sets the
// new socket's bound_dev_if to ifindex and allows the socket.
func loadBindDevProg(ifindex int) (int, error) {
	const (
		movImm = 0xb7 // BPF_ALU64 | BPF_MOV | BPF_K
		stxW   = 0x63 // BPF_STX | BPF_MEM | BPF_W
		exit   = 0x95 // BPF_JMP | BPF_EXIT
	)
	var insns []byte
	insns = append(insns, bpfInsn(movImm, 3, 0, 0, int32(ifindex))...)
	// r1 is the struct bpf_sock context; bound_dev_if is its first field.
	insns = append(insns, bpfInsn(stxW, 1, 3, 0, 0)...)
	insns = append(insns, bpfInsn(movImm, 0, 0, 0, 1)...) // verdict: allow
	insns = append(insns, bpfInsn(exit, 0, 0, 0, 0)...)
	license := []byte("GPL\x00")
	verifierLog := make([]byte, 4096)
	var attr [72]byte // union bpf_attr, BPF_PROG_LOAD part up to expected_attach_type
	binary.LittleEndian.PutUint32(attr[0:], unix.BPF_PROG_TYPE_CGROUP_SOCK)
	binary.LittleEndian.PutUint32(attr[4:], uint32(len(insns)/8))
	binary.LittleEndian.PutUint64(attr[8:], uint64(uintptr(unsafe.Pointer(&insns[0]))))
	binary.LittleEndian.PutUint64(attr[16:], uint64(uintptr(unsafe.Pointer(&license[0]))))
	binary.LittleEndian.PutUint32(attr[24:], 1) // log_level
	binary.LittleEndian.PutUint32(attr[28:], uint32(len(verifierLog)))
	binary.LittleEndian.PutUint64(attr[32:], uint64(uintptr(unsafe.Pointer(&verifierLog[0]))))
	binary.LittleEndian.PutUint32(attr[68:], unix.BPF_CGROUP_INET_SOCK_CREATE)
	fd, _, e := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, uintptr(unsafe.Pointer(&attr[0])), uintptr(len(attr)))
	runtime.KeepAlive(insns)
	runtime.KeepAlive(license)
	runtime.KeepAlive(verifierLog)
	if e != 0 {
		return -1, fmt.Errorf("BPF_PROG_LOAD: %v; verifier: %s", e, strings.TrimRight(string(verifierLog), "\x00"))
	}
	return int(fd), nil
}

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "... mount-point options ... - fstype source super-options"
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		if fs := strings.Fields(post); len(fs) > 0 && fs[0] == "cgroup2" {
			if f := strings.Fields(pre); len(f) >= 5 {
				return f[4], nil
			}
		}
	}
	return "", errors.New("no cgroup2 mount")
}

// mountCgroup2 mounts the cgroup v2 hierarchy for the test (a host with
// only v1 mounted can still mount v2) and unmounts it afterwards.
func mountCgroup2(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("cgroup2", dir, "cgroup2", 0, ""); err != nil {
		t.Fatalf("mount cgroup2 on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}
