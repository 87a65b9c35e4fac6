//go:build linux

package server

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Raw system calls. The socket reads and writes of every hot path (event
// loops, connections on goroutines, peer connections) and the loops'
// epoll_wait skip the runtime's system-call bookkeeping: the sockets are
// non-blocking, so none of these calls can hold its thread for long, and
// the bookkeeping has a cost beyond its own. When every P of the process
// has been idle, the runtime's monitor thread (sysmon) sleeps until a
// goroutine next enters a system call the ordinary way, which wakes it
// with a futex; it then polls every 20 µs until it sees the Ps idle again.
// A node that wakes for each batch, as a replica does for each write of
// copies, so woke a second thread each time, and on a VM each of those
// wakeups costs an inter-processor interrupt. With raw calls the monitor
// wakes on its own timers only (BENCHMARKS.md, "System calls").
//
// The monitor also preempts goroutines that run for long and polls the
// network while every P is busy; it does both once any ordinary system
// call or timer wakes it, and a node always has timers due within a
// second (the store's sweeper, and gossip in cluster mode). The long
// walks of the store yield between shards rather than wait for it (see
// store's yieldNote).

// sysRead is read(2) on fd without the runtime's bookkeeping.
func sysRead(fd int, p []byte) (int, error) { return sysRW(syscall.SYS_READ, fd, p) }

// sysWrite is write(2) on fd without the runtime's bookkeeping.
func sysWrite(fd int, p []byte) (int, error) { return sysRW(syscall.SYS_WRITE, fd, p) }

// sysRW makes system call trap, read(2) or write(2), on fd and p.
func sysRW(trap uintptr, fd int, p []byte) (int, error) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	n, _, errno := syscall.RawSyscall(trap, uintptr(fd), uintptr(ptr), uintptr(len(p)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// sysEpollPoll is epoll_wait(2) on epfd with a timeout of 0, without the
// runtime's bookkeeping: it never blocks.
func sysEpollPoll(epfd int, events []syscall.EpollEvent) (int, error) {
	n, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd),
		uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// rawConn is a TCP connection whose reads and writes use sysRead and
// sysWrite, waiting for the socket through the runtime's poller as
// net.Conn's do; deadlines and Close work as before.
type rawConn struct {
	net.Conn
	rc syscall.RawConn
}

// wrapConn returns nc reading and writing with raw system calls, or nc
// itself if it has no descriptor to do so with.
func wrapConn(nc net.Conn) net.Conn {
	if _, ok := nc.(*rawConn); ok {
		return nc
	}
	rc, ok := rawConnOf(nc)
	if !ok {
		return nc
	}
	return &rawConn{Conn: nc, rc: rc}
}

// rawConnOf returns nc's syscall.RawConn, if it has one.
func rawConnOf(nc net.Conn) (syscall.RawConn, bool) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	return rc, err == nil
}

// SyscallConn returns the connection's syscall.RawConn, as the wrapped
// net.Conn's does (an event loop takes its descriptor with it).
func (c *rawConn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// Read reads as net.Conn's Read does: it waits until something arrives,
// and returns io.EOF at the end of the input.
func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var rerr error
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = sysRead(int(fd), p)
			switch rerr {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // wait for the poller
			}
			return true
		}
	})
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting while the socket's buffer is full.
func (c *rawConn) Write(p []byte) (int, error) {
	var n int
	var werr error
	err := c.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			m, e := sysWrite(int(fd), p[n:])
			switch e {
			case nil:
				n += m
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false // wait for the poller
			default:
				werr = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return n, err
	case werr != nil:
		return n, os.NewSyscallError("write", werr)
	}
	return n, nil
}
