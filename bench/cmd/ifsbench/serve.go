package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// Ports of the upstream servers on the service address.
const (
	portBulk = 5001 // first byte 'U': sink of blocks, answers the byte count; 'D': source
	portEcho = 5002 // TCP echo
	portUDP  = 5003 // UDP echo
)

// bulkBuf is the size of every read and write on the throughput path:
// large enough that the client and servers make few system calls per
// megabyte and so are not what limits the measurement.
const bulkBuf = 256 << 10

func serveCmd(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	addr := fs.String("addr", "10.233.9.9", "IPv4 or IPv6 address to listen on")
	life := fs.Duration("lifetime", 2*time.Hour, "exit after this long even if never signalled")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ip, err := netip.ParseAddr(*addr)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	// The memory test holds one echo connection per tunnel.
	if got := raiseNoFile(1 << 18); got < 1<<18 {
		fmt.Fprintf(os.Stderr, "RLIMIT_NOFILE is %d: at most that many connections\n", got)
	}
	ctx, cancel := untilSignal(*life)
	defer cancel()
	tcp, udpNet := "tcp4", "udp4"
	if ip.Is6() {
		tcp, udpNet = "tcp6", "udp6"
	}
	var lc net.ListenConfig
	bulk, err := lc.Listen(ctx, tcp, netip.AddrPortFrom(ip, portBulk).String())
	if err != nil {
		return err
	}
	echo, err := lc.Listen(ctx, tcp, netip.AddrPortFrom(ip, portEcho).String())
	if err != nil {
		return err
	}
	udp, err := lc.ListenPacket(ctx, udpNet, netip.AddrPortFrom(ip, portUDP).String())
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Go(func() { acceptLoop(bulk, serveBulk) })
	wg.Go(func() { acceptLoop(echo, serveEcho) })
	// Two readers, so the echo server is not the single-threaded stage of
	// the UDP path when the kernel forwards.
	for range 2 {
		wg.Go(func() { udpEcho(udp.(*net.UDPConn)) })
	}
	fmt.Fprintln(os.Stderr, "serving on", ip)
	<-ctx.Done()
	bulk.Close()
	echo.Close()
	udp.Close()
	wg.Wait()
	return nil
}

// acceptLoop serves each connection on its own goroutine until ln closes.
// Connections still open then are dropped with the process.
func acceptLoop(ln net.Listener, handle func(*net.TCPConn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors: back off instead of spinning.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go handle(c.(*net.TCPConn))
	}
}

func serveBulk(c *net.TCPConn) {
	defer c.Close()
	var mode [1]byte
	if _, err := c.Read(mode[:]); err != nil {
		return
	}
	buf := make([]byte, bulkBuf)
	switch mode[0] {
	case 'U':
		// The upload comes in blocks of bulkBuf bytes whose first byte
		// is 1 in the last one. The count sent back lets the client time
		// the upload to the last byte received rather than the last one
		// it queued, without a half-close, which microsocks does not
		// pass on.
		var n uint64
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			n += uint64(len(buf))
			if buf[0] == 1 {
				break
			}
		}
		c.Write(binary.BigEndian.AppendUint64(nil, n))
		c.Read(buf) // until the client closes
	case 'D':
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}
}

func serveEcho(c *net.TCPConn) {
	defer c.Close()
	// A plain loop, not io.Copy: io.Copy would splice through a pipe,
	// three system calls for each 64-byte message.
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func udpEcho(c *net.UDPConn) {
	buf := make([]byte, 65536)
	for {
		n, src, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		c.WriteToUDPAddrPort(buf[:n], src)
	}
}

func waitCmd(args []string) error {
	fs := flag.NewFlagSet("wait", flag.ContinueOnError)
	addr := fs.String("addr", "", "IP:port that should accept TCP connections")
	limit := fs.Duration("timeout", 10*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *limit)
	defer cancel()
	for {
		c, err := dialTCP(ctx, *addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not accepting after %v: %w", *addr, *limit, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
