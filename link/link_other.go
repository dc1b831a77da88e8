//go:build !linux

package link

import (
	"context"
	"errors"
)

// Run is not supported outside Linux.
func (w *Watcher) Run(ctx context.Context) error {
	return errors.New("interface watching is not supported on this OS")
}

// Prime is not supported outside Linux.
func (w *Watcher) Prime() error {
	return errors.New("interface watching is not supported on this OS")
}
