package socks

import (
	"testing"
	"unsafe"
)

// TestGrowStack: after growStack, a goroutine has the stack the
// connection path needs (the dial, zap's encoder: about 5.5 KiB) without
// another growth, which would move its stack (and so its variables).
func TestGrowStack(t *testing.T) {
	type result struct{ start, grown, deep uintptr }
	got := make(chan result, 1)
	go func() {
		var x byte
		var r result
		r.start = uintptr(unsafe.Pointer(&x))
		growStack()
		r.grown = uintptr(unsafe.Pointer(&x))
		useStack(13, &x, &r.deep)
		got <- r
	}()
	r := <-got
	t.Logf("stack moved by growStack: %v", r.start != r.grown)
	if r.deep != r.grown {
		t.Errorf("the stack grew again under %d bytes of frames after growStack", 13*probeFrame)
	}
}

// probeFrame is about what each useStack call takes of the stack.
const probeFrame = 440

// useStack calls itself n deep, about probeFrame bytes a call, and at the
// bottom stores where *x is then.
//
//go:noinline
func useStack(n int, x *byte, at *uintptr) {
	var pad [probeFrame - 40]byte
	keepPad(&pad)
	if n == 0 {
		*at = uintptr(unsafe.Pointer(x))
		return
	}
	useStack(n-1, x, at)
}

//go:noinline
func keepPad(*[probeFrame - 40]byte) {}
