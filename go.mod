module github.com/ifsocks/ifsocks

go 1.26.0

require (
	github.com/BurntSushi/toml v1.6.0
	go.uber.org/goleak v1.3.0
	go.uber.org/zap v1.28.0
	golang.org/x/crypto v0.58.0
	golang.org/x/net v0.62.0
	golang.org/x/sync v0.24.0
	golang.org/x/sys v0.49.0
	golang.org/x/term v0.47.0
)

require go.uber.org/multierr v1.10.0 // indirect
