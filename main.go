// Command ifsocks is a SOCKS5 proxy that sends each user's traffic out of
// that user's network interface (SO_BINDTODEVICE).
//
// Usage:
//
//	ifsocks [-config FILE]     run the daemon in the foreground
//	ifsocks [-config FILE] -check [-check-user NAME]
//	                           check the configuration against this host
//	                           (and the auth backend, with a dry login)
//	ifsocks hash-password      read a password on stdin, print a bcrypt hash
//	ifsocks -version           the version, module version and VCS revision
//	ifsocks -h                 this usage, with every subcommand
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/ifsocks/ifsocks/check"
	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/daemon"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ifsocks:", err)
		os.Exit(1)
	}
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		if c, ok := findSubcommand(args[0]); ok {
			return c.run(args[1:], stdin, stdout, stderr)
		}
	}
	fs := flag.NewFlagSet("ifsocks", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // written below, to stdout when asked for
	cfgPath := fs.String("config", "", "configuration file (default "+config.DefaultPath+" if it exists, else built-in defaults)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this IP:port (profiling; keep it on loopback)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	checkOnly := fs.Bool("check", false, "check the configuration against this host (interfaces, addresses, routes, file mode), print a report and exit; exit status 1 if it finds errors")
	checkUser := fs.String("check-user", "", "with -check: also ask the auth backend ([auth] http or ldap) about this user's login, with the password read from stdin, and print the egress it would get")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout, fs) // asked for: not an error
			return nil
		}
		usage(stderr, fs)
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unknown subcommand %q (subcommands: %s; see -h)", fs.Arg(0), subcommandNames())
	}
	if *showVersion {
		fmt.Fprintln(stdout, versionString())
		return nil
	}
	if *checkUser != "" && !*checkOnly {
		return errors.New("-check-user only goes with -check")
	}
	if *checkOnly {
		return checkConfig(*cfgPath, *checkUser, stdin, stdout, stderr)
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	log, level, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	defer log.Sync()
	log.Info("configuration loaded", zap.String("source", cfg.Source), zap.String("version", version))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	path := *cfgPath
	if path == "" && cfg.Source == config.DefaultPath {
		path = config.DefaultPath
	}
	if *cpuProfile != "" {
		stopProfile, err := startCPUProfile(*cpuProfile)
		if err != nil {
			return err
		}
		defer stopProfile()
	}
	return daemon.Run(ctx, daemon.Options{Path: path, Config: cfg, Log: log, Level: level, Reload: hup, Pprof: *pprofAddr})
}

// startCPUProfile profiles until the returned function is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpuprofile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// loadConfig reads path, or the default file if it exists, or falls back
// to the built-in default.
func loadConfig(path string) (*config.Config, error) {
	if path != "" {
		return config.Load(path)
	}
	// Only a missing file means "no configuration": any other error (a
	// directory the daemon may not read, say) must not silently start an
	// unauthenticated proxy on the built-in default.
	if _, err := os.Stat(config.DefaultPath); !errors.Is(err, fs.ErrNotExist) {
		return config.Load(config.DefaultPath)
	}
	return config.Default(), nil
}

// checkConfig is -check: it loads the file the daemon would read and
// explains it against this host (package check).
func checkConfig(path, user string, stdin io.Reader, stdout, stderr io.Writer) error {
	if path == "" {
		path = config.DefaultPath
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stdout, "nothing to check: no -config given and no %s; the daemon would run with the built-in default: listen on %s, no authentication, kernel routing\n", path, config.DefaultListen)
			return nil
		}
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	var pass string
	if user != "" {
		if pass, err = readPassword(stdin, stderr); err != nil {
			return err
		}
	}
	n := check.Report(stdout, cfg, path)
	// The backend is contacted once (a dry login with -check-user), so
	// the report says whether logins can work at all.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := daemon.CheckAuth(ctx, cfg, stdout, user, pass); err != nil {
		if n == 0 {
			return fmt.Errorf("check of %s: %w", path, err)
		}
		n++
	}
	if n > 0 {
		return fmt.Errorf("check of %s failed with %d error(s), listed above", path, n)
	}
	return nil
}

// newLogger builds the one logger of the process. Its level can be
// changed later (on reload) through the returned AtomicLevel.
func newLogger(lc config.Log, w io.Writer) (*zap.Logger, zap.AtomicLevel, error) {
	lvl, err := zap.ParseAtomicLevel(lc.Level)
	if err != nil {
		return nil, lvl, fmt.Errorf("log.level: %w", err)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.TimeKey = "ts"
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	if lc.Format == "console" {
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		enc = zapcore.NewJSONEncoder(ec)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), lvl)
	return zap.New(core, zap.ErrorOutput(zapcore.Lock(zapcore.AddSync(w)))), lvl, nil
}

// usageReport prints the traffic per user from the accounting database
// (daemon.Usage).
func usageReport(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ifsocks usage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file, for [accounting] path and the quotas (default "+config.DefaultPath+")")
	period := fs.String("period", "", "day, week or month: the current one for every user (default: each user's quota period, month without a quota)")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("usage: unexpected argument %q", fs.Arg(0))
	}
	path := *cfgPath
	if path == "" {
		path = config.DefaultPath
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	return daemon.Usage(stdout, cfg, *period, *asJSON, time.Now())
}

// hashPassword prints a bcrypt hash of the password read from stdin (one
// line; without echo when stdin is a terminal).
func hashPassword(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ifsocks hash-password", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost (4-31); each step doubles the time per check")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stdout, "Usage: ifsocks hash-password [-cost N] < password")
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("hash-password reads the password on stdin; unexpected argument %q", fs.Arg(0))
	}
	// bcrypt quietly replaces a cost below its minimum with its default;
	// an operator asking for 3 should hear about it instead.
	if *cost < bcrypt.MinCost || *cost > bcrypt.MaxCost {
		return fmt.Errorf("-cost %d: must be %d-%d", *cost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	pw, err := readPassword(stdin, stderr)
	if err != nil {
		return err
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), *cost)
	if err != nil {
		return fmt.Errorf("hash password: %w", err)
	}
	fmt.Fprintln(stdout, string(h))
	return nil
}

// readPassword reads one password from stdin: without echo when it is a
// terminal, else its first line.
func readPassword(stdin io.Reader, stderr io.Writer) (string, error) {
	var pw string
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "Password: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		pw = string(b)
	} else {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read password: %w", err)
		}
		pw = strings.TrimRight(line, "\r\n")
	}
	if pw == "" {
		return "", errors.New("empty password")
	}
	return pw, nil
}
