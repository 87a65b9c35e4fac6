//go:build unix

package server

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time the process has spent in user and in
// system mode (STAT's rusage_user and rusage_system).
func processCPU() (user, system time.Duration) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}
