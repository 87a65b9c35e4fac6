package store

import (
	"os"
	"syscall"
	"unsafe"
)

// mapArena reserves n bytes of zeroed memory outside the Go heap. Pages
// become resident only when first written. Transparent huge pages are
// turned off for it: each shard's ring grows from its own start, and 2 MiB
// pages would make every partly used ring cost whole megabytes.
func mapArena(n int) ([]byte, error) {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	_ = syscall.Madvise(b, syscall.MADV_NOHUGEPAGE) // advisory: errors do not matter
	return b, nil
}

// unmapArena returns an arena from mapArena to the operating system.
func unmapArena(b []byte) { _ = syscall.Munmap(b) }

// releaseArena hands the whole pages inside b back to the operating system;
// they read as zeros afterwards and are not resident until written again.
func releaseArena(b []byte) {
	page := uintptr(os.Getpagesize())
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	lo := (start + page - 1) &^ (page - 1)
	hi := (start + uintptr(len(b))) &^ (page - 1)
	if hi > lo {
		_ = syscall.Madvise(b[lo-start:hi-start], syscall.MADV_DONTNEED)
	}
}
