//go:build linux

package server

import (
	"io"
	"net"
	"os"
	"sync"
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
	rc          syscall.RawConn
	read, write rawOp
}

// rawOp is one direction of a rawConn. syscall.RawConn takes the function
// to run on the descriptor as an interface's argument, so a closure made
// per call would escape, with what it captures: three allocations per read
// or write. Each direction instead keeps its function, bound once, and
// passes it the buffer and takes back the result through these fields,
// under a mutex that also keeps concurrent reads (or writes) apart, as
// net.Conn's own lock does.
type rawOp struct {
	mu  sync.Mutex
	buf []byte
	n   int
	err error              // the system call's
	fn  func(uintptr) bool // rawConn.readOnce or rawConn.writeAll
}

// do runs op.fn on p through call, c.rc's Read or Write, and returns the
// bytes done, the system call's error and call's own.
func (op *rawOp) do(call func(func(uintptr) bool) error, p []byte) (n int, sysErr, err error) {
	op.mu.Lock()
	op.buf, op.n, op.err = p, 0, nil
	err = call(op.fn)
	n, sysErr = op.n, op.err
	op.buf = nil
	op.mu.Unlock()
	return n, sysErr, err
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
	c := &rawConn{Conn: nc, rc: rc}
	c.read.fn, c.write.fn = c.readOnce, c.writeAll
	return c
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
	n, rerr, err := c.read.do(c.rc.Read, p)
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

// readOnce is Read's function on the descriptor: one read into c.read.buf,
// or false to wait for the poller if there is nothing to read. c.read.mu
// is held.
func (c *rawConn) readOnce(fd uintptr) bool {
	op := &c.read
	for {
		op.n, op.err = sysRead(int(fd), op.buf)
		switch op.err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait for the poller
		}
		return true
	}
}

// Write writes all of p, waiting while the socket's buffer is full.
func (c *rawConn) Write(p []byte) (int, error) {
	n, werr, err := c.write.do(c.rc.Write, p)
	switch {
	case err != nil:
		return n, err
	case werr != nil:
		return n, os.NewSyscallError("write", werr)
	}
	return n, nil
}

// writeAll is Write's function on the descriptor: it writes c.write.buf
// from c.write.n on, or returns false to wait for room. c.write.mu is
// held.
func (c *rawConn) writeAll(fd uintptr) bool {
	op := &c.write
	for op.n < len(op.buf) {
		m, e := sysWrite(int(fd), op.buf[op.n:])
		switch e {
		case nil:
			op.n += m
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false // wait for the poller
		default:
			op.err = e
			return true
		}
	}
	return true
}
