//go:build linux

package test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

const (
	bulkSize  = 50 << 20
	noiseSize = 1 << 20 // traffic allowed on the idle NIC (ND, ARP, ...)
)

type linkCounters struct{ rx, tx uint64 }

// linkStats reads `ip -s link` byte counters of dev in ns.
func linkStats(tb testing.TB, ns, dev string) linkCounters {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _, err := nstest.Run(ctx, nil, "ip", "-j", "-s", "-n", ns, "link", "show", "dev", dev)
	if err != nil {
		tb.Fatal(err)
	}
	var links []struct {
		Stats64 struct {
			RX struct{ Bytes uint64 } `json:"rx"`
			TX struct{ Bytes uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		tb.Fatalf("parse ip -j -s link %s: %v in %q", dev, err, out)
	}
	return linkCounters{links[0].Stats64.RX.Bytes, links[0].Stats64.TX.Bytes}
}

// Test 4: 50 MB each way through bob arrive intact, and the bytes really
// crossed wan2 (the non-default route), not wan1.
func TestBulkBob(t *testing.T) {
	e, _ := getDaemon(t)
	C, P := e.topo.C, e.topo.P
	dir := t.TempDir()
	o := curlOpts{user: bob.name, pass: bob.pass, maxTime: 120}
	w1, w2 := linkStats(t, P, "wan1"), linkStats(t, P, "wan2")

	// Download: wan2 RX must grow by at least the payload.
	const downSeed = 42
	down := filepath.Join(dir, "down.bin")
	url := fmt.Sprintf("http://10.231.9.9:8080/bytes?n=%d&seed=%d", bulkSize, downSeed)
	do := o
	do.extra = []string{"-o", down}
	if r := curlIn(t, C, do, url); r.exit != 0 {
		t.Fatalf("download: exit %d, %s", r.exit, r.stderr)
	}
	if got, n := fileSHA256(t, down); n != bulkSize || got != expectedSHA256(downSeed, bulkSize) {
		t.Errorf("download: %d bytes sha256 %s, want %d bytes sha256 %s", n, got, bulkSize, expectedSHA256(downSeed, bulkSize))
	}
	mid1, mid2 := linkStats(t, P, "wan1"), linkStats(t, P, "wan2")
	if d := mid2.rx - w2.rx; d < bulkSize {
		t.Errorf("download: wan2 RX grew by %d bytes, want >= %d", d, bulkSize)
	}

	// Upload: wan2 TX must grow by at least the payload.
	const upSeed = 7
	up := filepath.Join(dir, "up.bin")
	writeSeeded(t, up, upSeed, bulkSize)
	uo := o
	uo.extra = []string{"-H", "Content-Type: application/octet-stream", "--data-binary", "@" + up}
	r := curlIn(t, C, uo, "http://10.231.9.9:8080/sink")
	if want := fmt.Sprintf("%s %d", expectedSHA256(upSeed, bulkSize), bulkSize); r.exit != 0 || strings.TrimSpace(r.stdout) != want {
		t.Errorf("upload: exit %d, server got %q, want %q (stderr %q)", r.exit, strings.TrimSpace(r.stdout), want, r.stderr)
	}
	end1, end2 := linkStats(t, P, "wan1"), linkStats(t, P, "wan2")
	if d := end2.tx - mid2.tx; d < bulkSize {
		t.Errorf("upload: wan2 TX grew by %d bytes, want >= %d", d, bulkSize)
	}
	if drx, dtx := end1.rx-w1.rx, end1.tx-w1.tx; drx >= noiseSize || dtx >= noiseSize {
		t.Errorf("wan1 moved RX %d / TX %d bytes during bob's transfers, want < %d each", drx, dtx, noiseSize)
	}
	t.Logf("wan2 RX +%d TX +%d; wan1 RX +%d TX +%d (download phase wan1 RX +%d)",
		end2.rx-w2.rx, end2.tx-w2.tx, end1.rx-w1.rx, end1.tx-w1.tx, mid1.rx-w1.rx)
}

func fileSHA256(tb testing.TB, path string) (string, int64) {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		tb.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil)), n
}

func writeSeeded(tb testing.TB, path string, seed uint64, n int64) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.CopyN(f, seededStream(seed), n); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
}
