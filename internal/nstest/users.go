package nstest

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// User is a [[users]] entry of a test configuration.
type User struct {
	Name     string
	Password string
	// Hashed writes password_hash (bcrypt) instead of password.
	Hashed bool
	// Interface, when set, is the entry's interface line; tests also
	// match it against the interface field of the user's flows.
	Interface string
	// Egress is the entry's other lines as TOML, e.g. `interface = "wan1"`.
	Egress string
}

// Block is the user's [[users]] table.
func (u User) Block(tb testing.TB) string {
	tb.Helper()
	text, err := u.Text()
	if err != nil {
		tb.Fatal(err)
	}
	return text
}

// Text is Block returning the error (of hashing the password).
func (u User) Text() (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "\n[[users]]\nname = %q\n", u.Name)
	if u.Hashed {
		h, err := HashErr(u.Password)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "password_hash = %q\n", h)
	} else {
		fmt.Fprintf(&b, "password = %q\n", u.Password)
	}
	if u.Interface != "" {
		fmt.Fprintf(&b, "interface = %q\n", u.Interface)
	}
	if u.Egress != "" {
		b.WriteString(strings.TrimRight(u.Egress, "\n") + "\n")
	}
	return b.String(), nil
}

var hashes sync.Map // password -> *hashEntry

type hashEntry struct {
	once sync.Once
	hash string
	err  error
}

// Hash is a bcrypt hash of password at the minimum cost, computed once per
// test process and password (bcrypt is slow on purpose; the daemon must
// accept any valid cost).
func Hash(tb testing.TB, password string) string {
	tb.Helper()
	h, err := HashErr(password)
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

// HashErr is Hash returning the error.
func HashErr(password string) (string, error) {
	v, _ := hashes.LoadOrStore(password, new(hashEntry))
	e := v.(*hashEntry)
	e.once.Do(func() {
		h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
		e.hash, e.err = string(h), err
	})
	return e.hash, e.err
}
