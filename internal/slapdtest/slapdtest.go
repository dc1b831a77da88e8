// Package slapdtest runs a real OpenLDAP server (slapd, Debian package
// slapd) for tests: a generated slapd.conf, a database loaded with slapadd
// from the test's LDIF, and TLS with a CA and server certificate made for
// the run. It listens on loopback (optionally inside a network namespace)
// with ldaps:// and ldap:// (for StartTLS). Test-only.
package slapdtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Suffix is the directory's base DN; RootDN/RootPW its administrator.
const (
	Suffix = "dc=example,dc=org"
	RootDN = "cn=admin," + Suffix
	RootPW = "admin-Pw-7c1d"
)

// Options configure a Server.
type Options struct {
	// LDIF is loaded under Suffix (the suffix entry itself is made).
	LDIF string
	// Netns, when set, is the network namespace slapd runs in; its
	// loopback must be up, and Dial must reach into it (the test's
	// namespace helper), for the readiness check.
	Netns string
	Dial  func(network, addr string) (net.Conn, error)
}

// Server is a running slapd.
type Server struct {
	Dir    string
	CAFile string // PEM of the CA that signed the server certificate
	// LDAPS is ldaps://127.0.0.1:port, LDAP ldap://127.0.0.1:port (for
	// StartTLS).
	LDAPS, LDAP string

	opt  Options
	conf string
	urls string
	cmd  *exec.Cmd
	done chan struct{}
}

// Available reports whether slapd is installed; tests skip without it
// unless CI is set.
func Available() bool {
	_, err := exec.LookPath("slapd")
	return err == nil
}

// Start writes the configuration, certificates and database into a
// temporary directory and starts slapd; it is stopped when the test ends.
func Start(tb testing.TB, opt Options) *Server {
	tb.Helper()
	if !Available() {
		if os.Getenv("CI") != "" {
			tb.Fatal("slapd not installed (Debian package slapd)")
		}
		tb.Skip("slapd not installed")
	}
	s := &Server{Dir: tb.TempDir(), opt: opt}
	if err := os.Mkdir(filepath.Join(s.Dir, "db"), 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := s.writeTLS(); err != nil {
		tb.Fatalf("slapd certificates: %v", err)
	}
	s.conf = filepath.Join(s.Dir, "slapd.conf")
	if err := os.WriteFile(s.conf, []byte(s.config()), 0o600); err != nil {
		tb.Fatal(err)
	}
	ldif := filepath.Join(s.Dir, "data.ldif")
	base := fmt.Sprintf("dn: %s\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n", Suffix)
	if err := os.WriteFile(ldif, []byte(base+opt.LDIF), 0o600); err != nil {
		tb.Fatal(err)
	}
	if out, err := exec.Command("slapadd", "-f", s.conf, "-l", ldif).CombinedOutput(); err != nil {
		tb.Fatalf("slapadd: %v\n%s", err, out)
	}
	ports := freePorts(tb, 2)
	ps, pl := ports[0], ports[1]
	s.LDAPS = fmt.Sprintf("ldaps://127.0.0.1:%d", ps)
	s.LDAP = fmt.Sprintf("ldap://127.0.0.1:%d", pl)
	s.urls = s.LDAPS + "/ " + s.LDAP + "/"
	tb.Cleanup(func() { s.Stop() })
	if err := s.Restart(); err != nil {
		tb.Fatal(err)
	}
	return s
}

// Restart starts slapd again after Stop, on the same ports and data.
func (s *Server) Restart() error {
	args := []string{"slapd", "-d", "0", "-f", s.conf, "-h", s.urls}
	if s.opt.Netns != "" {
		args = append([]string{"ip", "netns", "exec", s.opt.Netns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = nstest.ChildAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start slapd: %w", err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(s.done) }()
	// Ready when the ldaps port accepts.
	deadline := time.Now().Add(15 * time.Second)
	for {
		if s.accepts() {
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("slapd exited: %s", log.String())
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("slapd not accepting after 15s: %s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop ends slapd (SIGTERM, then SIGKILL after 5 s) and waits for it.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

func (s *Server) accepts() bool {
	addr := strings.TrimPrefix(s.LDAPS, "ldaps://")
	dial := s.opt.Dial
	if dial == nil {
		dial = func(network, addr string) (net.Conn, error) { return net.DialTimeout(network, addr, time.Second) }
	}
	c, err := dial("tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func (s *Server) config() string {
	var b strings.Builder
	for _, sc := range []string{"core", "cosine", "nis", "inetorgperson"} {
		fmt.Fprintf(&b, "include /etc/ldap/schema/%s.schema\n", sc)
	}
	fmt.Fprintf(&b, `pidfile %[1]s/slapd.pid
argsfile %[1]s/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile %[1]s/ca.pem
TLSCertificateFile %[1]s/server.pem
TLSCertificateKeyFile %[1]s/server.key
database mdb
maxsize 16777216
suffix "%[2]s"
rootdn "%[3]s"
rootpw %[4]s
directory %[1]s/db
access to attrs=userPassword
	by anonymous auth
	by * none
access to *
	by * read
`, s.Dir, Suffix, RootDN, RootPW)
	return b.String()
}

// writeTLS makes a CA and a server certificate for 127.0.0.1 and
// localhost.
func (s *Server) writeTLS() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "slapdtest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	s.CAFile = filepath.Join(s.Dir, "ca.pem")
	files := map[string]*pem.Block{
		"ca.pem":     {Type: "CERTIFICATE", Bytes: caDER},
		"server.pem": {Type: "CERTIFICATE", Bytes: der},
		"server.key": {Type: "PRIVATE KEY", Bytes: keyDER},
	}
	for name, blk := range files {
		if err := os.WriteFile(filepath.Join(s.Dir, name), pem.EncodeToMemory(blk), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// OtherCA writes a CA that did not sign the server's certificate and
// returns its file, for tests of verification.
func (s *Server) OtherCA(tb testing.TB) string {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "another CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, ca, ca, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(s.Dir, "other-ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// freePorts returns n TCP ports free on loopback now. In a fresh network
// namespace any port is free, so ports picked outside are as good.
func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	var out []int
	for range n {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("free port: %v", err)
		}
		defer l.Close()
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out
}
