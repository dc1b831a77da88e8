package nstest_test

import (
	"os"
	"testing"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// TestTopologyDaemon builds the daemon; Main removes the build afterwards.
func TestMain(m *testing.M) { os.Exit(nstest.Main(m)) }
