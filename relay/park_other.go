//go:build !linux

package relay

// canPark: outside Linux every direction keeps its goroutine.
const canPark = false

// lot is a stub: nothing parks.
type lot struct{}

var theLot lot

func (lot) park(*half) bool { return false }
func (lot) take(*half) bool { return false }
