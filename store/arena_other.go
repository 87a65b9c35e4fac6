//go:build !linux

package store

// mapArena allocates the arena on the Go heap where anonymous mappings are
// not used. The slice holds no pointers, so the garbage collector does not
// scan it.
func mapArena(n int) ([]byte, error) { return make([]byte, n), nil }

func unmapArena([]byte) {}

func releaseArena([]byte) {}
