//go:build linux

package server

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// rawPair returns both ends of a loopback TCP connection, the first read
// and written with raw system calls.
func rawPair(t *testing.T) (*rawConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	rc, ok := wrapConn(nc).(*rawConn)
	if !ok {
		t.Fatalf("wrapConn(%T) did not wrap", nc)
	}
	t.Cleanup(func() { rc.Close(); peer.Close() })
	return rc, peer
}

// TestRawConn: a rawConn reads and writes as net.Conn does: it waits for
// input, writes all of a write larger than the socket's buffers while the
// peer reads slowly, honours deadlines, and reports the end of the input
// and its own closing as net.Conn does.
func TestRawConn(t *testing.T) {
	t.Run("read waits for input", func(t *testing.T) {
		c, peer := rawPair(t)
		go func() {
			time.Sleep(50 * time.Millisecond)
			peer.Write([]byte("hello"))
		}()
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != "hello" {
			t.Fatalf("Read = %q, %v", buf[:n], err)
		}
	})

	t.Run("large write", func(t *testing.T) {
		c, peer := rawPair(t)
		want := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB: the socket takes it in parts
		got := make(chan []byte)
		go func() {
			b, _ := io.ReadAll(peer)
			got <- b
		}()
		n, err := c.Write(want)
		if err != nil || n != len(want) {
			t.Fatalf("Write = %d, %v; want %d", n, err, len(want))
		}
		c.Close()
		if b := <-got; !bytes.Equal(b, want) {
			t.Fatalf("peer read %d bytes, not what was written", len(b))
		}
	})

	t.Run("end of input", func(t *testing.T) {
		c, peer := rawPair(t)
		peer.Write([]byte("last"))
		peer.Close()
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "last" {
			t.Fatalf("ReadAll = %q, %v", b, err)
		}
		if n, err := c.Read(make([]byte, 4)); n != 0 || err != io.EOF {
			t.Fatalf("Read after the end = %d, %v; want io.EOF", n, err)
		}
	})

	t.Run("read deadline", func(t *testing.T) {
		c, _ := rawPair(t)
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		start := time.Now()
		_, err := c.Read(make([]byte, 4))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read = %v; want os.ErrDeadlineExceeded", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("Read returned after %v", d)
		}
	})

	t.Run("write deadline while the peer does not read", func(t *testing.T) {
		c, _ := rawPair(t)
		c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Write(make([]byte, 64<<20))
		if !errors.Is(err, os.ErrDeadlineExceeded) || n == 0 || n == 64<<20 {
			t.Fatalf("Write = %d, %v; want part written, then os.ErrDeadlineExceeded", n, err)
		}
	})

	t.Run("closed while reading", func(t *testing.T) {
		c, _ := rawPair(t)
		go func() {
			time.Sleep(50 * time.Millisecond)
			c.Close()
		}()
		_, err := c.Read(make([]byte, 4))
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read = %v; want net.ErrClosed", err)
		}
	})

	t.Run("peer reset", func(t *testing.T) {
		c, peer := rawPair(t)
		peer.(*net.TCPConn).SetLinger(0)
		peer.Close()
		time.Sleep(20 * time.Millisecond)
		_, err := c.Read(make([]byte, 4))
		var se *os.SyscallError
		if !errors.As(err, &se) {
			t.Fatalf("Read = %v; want a read error", err)
		}
	})
}

// TestRawCallsAllocs pins the raw reads and writes, including a read that
// finds nothing (EAGAIN, returned as an error), at zero allocations.
func TestRawCallsAllocs(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	msg, buf := []byte("response"), make([]byte, 64)
	n := testing.AllocsPerRun(1000, func() {
		if _, err := sysWrite(fds[0], msg); err != nil {
			t.Fatal(err)
		}
		if n, err := sysRead(fds[1], buf); err != nil || n != len(msg) {
			t.Fatalf("sysRead = %d, %v", n, err)
		}
		if _, err := sysRead(fds[1], buf); err != syscall.EAGAIN {
			t.Fatalf("sysRead of nothing = %v, want EAGAIN", err)
		}
	})
	if n != 0 {
		t.Fatalf("a write and two reads allocate %v times", n)
	}
}

// TestRawConnAllocs pins rawConn's Read and Write, which connections on
// goroutines and peer connections use for every batch, at zero
// allocations, a read that waits for the poller included.
func TestRawConnAllocs(t *testing.T) {
	c, peer := rawPair(t)
	msg, buf := []byte("response"), make([]byte, 64)
	t.Run("ready", func(t *testing.T) {
		n := testing.AllocsPerRun(1000, func() {
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(peer, buf[:len(msg)]); err != nil {
				t.Fatal(err)
			}
			if _, err := peer.Write(msg); err != nil {
				t.Fatal(err)
			}
			if n, err := io.ReadFull(c, buf[:len(msg)]); err != nil || n != len(msg) {
				t.Fatalf("Read = %d, %v", n, err)
			}
		})
		if n != 0 {
			t.Fatalf("a write and a read allocate %v times", n)
		}
	})
	t.Run("waiting", func(t *testing.T) {
		// The peer writes only once the read waits: the first try finds
		// nothing, and the poller wakes the reader.
		go func() {
			for range 101 { // AllocsPerRun runs once more than asked
				time.Sleep(200 * time.Microsecond)
				peer.Write(msg)
			}
		}()
		n := testing.AllocsPerRun(100, func() {
			if n, err := io.ReadFull(c, buf[:len(msg)]); err != nil || n != len(msg) {
				t.Fatalf("Read = %d, %v", n, err)
			}
		})
		if n != 0 {
			t.Fatalf("a read that waits allocates %v times", n)
		}
	})
}
