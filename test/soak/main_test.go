package soak

import (
	"os"
	"testing"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// The soak tests build the daemon; Main removes the build afterwards.
func TestMain(m *testing.M) { os.Exit(nstest.Main(m)) }
