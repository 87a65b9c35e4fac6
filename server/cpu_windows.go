package server

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time the process has spent in user and in
// kernel mode (STAT's rusage_user and rusage_system).
func processCPU() (user, system time.Duration) {
	var creation, exit, kernel, usr syscall.Filetime
	h, err := syscall.GetCurrentProcess()
	if err != nil || syscall.GetProcessTimes(h, &creation, &exit, &kernel, &usr) != nil {
		return 0, 0
	}
	return filetime(usr), filetime(kernel)
}

// filetime returns a duration held in a Filetime, in 100 ns units.
func filetime(ft syscall.Filetime) time.Duration {
	return time.Duration(uint64(ft.HighDateTime)<<32|uint64(ft.LowDateTime)) * 100
}
