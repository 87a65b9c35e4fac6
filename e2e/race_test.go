//go:build race

package e2e

// raceEnabled reports whether the tests run with -race; the node is then
// built with -race too.
const raceEnabled = true
