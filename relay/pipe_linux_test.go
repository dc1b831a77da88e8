package relay

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPipeSize: the relay's pipes hold pipeSize bytes, so one splice moves
// up to that much. Measured on the benchmark's path, one stream through a
// 64 KiB pipe (the kernel's default) cost the proxy about twice the CPU per
// GB of a 1 MiB one (1.2 s against 0.6 s), and a 256 KiB one 0.95 s.
func TestPipeSize(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		t.Skipf("pipe-max-size: %v", err)
	}
	if limit, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || limit < pipeSize {
		t.Skipf("fs.pipe-max-size %q is below the %d bytes asked for", b, pipeSize)
	}
	p, err := getPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	got, err := unix.FcntlInt(uintptr(p.r), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got != pipeSize {
		t.Errorf("pipe holds %d bytes, want %d", got, pipeSize)
	}
}
