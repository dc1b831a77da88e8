// Command ifsbench is the load tool of the ifsocks benchmark (bench/run.sh):
// the upstream servers, and clients that measure TCP throughput, connection
// rate, memory per idle tunnel and UDP ASSOCIATE through any SOCKS5 proxy
// (or directly, for the kernel-forwarding baseline). Each measurement is
// printed as one JSON record on stdout; `report` turns the records of a run
// into Markdown.
//
// It is a benchmark client, not a SOCKS library: its SOCKS5 code is the
// minimum needed to drive a proxy and deliberately shares nothing with the
// daemon's packages, so a bug there cannot hide itself here.
//
// Usage:
//
//	ifsbench serve    -addr IP                      sink/source, echo, UDP echo
//	ifsbench wait     -addr IP:PORT -timeout D      until a TCP port accepts
//	ifsbench probe    [proxy flags]                 one CONNECT + echo, exit status
//	ifsbench tcp      [proxy flags] -streams N -dir up|down -duration D
//	ifsbench connrate [proxy flags] -concurrency N -duration D
//	ifsbench tunnels  [proxy flags] -n N -rss-pid PID
//	ifsbench udp      [proxy flags] -window N -size B -duration D
//	ifsbench note     -kind K -key K (-value V | -file F)
//	ifsbench report   -in results.jsonl -out RESULTS.md
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "ifsbench:", err)
		}
		os.Exit(1)
	}
}

var commands = map[string]func(args []string) error{
	"serve":    serveCmd,
	"wait":     waitCmd,
	"probe":    probeCmd,
	"tcp":      tcpCmd,
	"connrate": connrateCmd,
	"tunnels":  tunnelsCmd,
	"udp":      udpCmd,
	"note":     noteCmd,
	"authhook": authhookCmd,
	"report":   reportCmd,
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: ifsbench serve|wait|probe|tcp|connrate|tunnels|udp|authhook|note|report [flags]")
	}
	cmd, ok := commands[args[0]]
	if !ok {
		return fmt.Errorf("unknown subcommand %q", args[0])
	}
	return cmd(args[1:])
}
