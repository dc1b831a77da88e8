//go:build !linux

package nstest

import "errors"

// Enter needs Linux network namespaces.
func Enter(name string, fn func() error) error {
	return errors.New("nstest: network namespaces are Linux-only")
}
