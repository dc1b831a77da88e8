//go:build race

package socks

// raceEnabled: the race detector slows bcrypt about twentyfold (cost 10
// takes seconds), so timing tests lower the cost under it.
const raceEnabled = true
