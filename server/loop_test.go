package server

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"vbcache/protocol"
)

// Connections start on an event loop where there are any (loop_linux.go)
// and move to a goroutine of their own when they would block. These tests
// run each case both ways.

func forEachMode(t *testing.T, f func(t *testing.T, mod func(*Config))) {
	t.Run("loops", func(t *testing.T) { f(t, nil) })
	t.Run("goroutines", func(t *testing.T) { f(t, func(cfg *Config) { cfg.goroutinePerConn = true }) })
}

// loopConns counts the connections the event loops hold.
func loopConns(s *Server) int {
	s.mu.Lock()
	loops := s.loops
	s.mu.Unlock()
	n := 0
	for _, l := range loops {
		n += l.held()
	}
	return n
}

// TestLoopsServeConnections: on Linux, connections with a request or two in
// flight stay on the event loops; one that pipelines moves to a goroutine.
func TestLoopsServeConnections(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("event loops are Linux-only")
	}
	srv, addr := testServer(t, nil)
	var cs []*client
	for i := range 8 {
		c := dial(t, addr)
		c.do(frame(protocol.OpSet, key(i), "v", setExtras(0, 0), 1, 0))
		if res := c.do(frame(protocol.OpGet, key(i), "", nil, 2, 0)); string(res.Value) != "v" {
			t.Fatalf("GET: %q", res.Value)
		}
		cs = append(cs, c)
	}
	if n := loopConns(srv); n != len(cs) {
		t.Fatalf("loops hold %d connections, want %d", n, len(cs))
	}
	// A client that pipelines moves to a goroutine; its answers are the
	// same.
	var batch [][]byte
	for i := range loopPipeline {
		batch = append(batch, frame(protocol.OpGet, key(0), "", nil, uint32(i), 0))
	}
	cs[0].send(batch...)
	for i := range loopPipeline {
		if res := cs[0].read(); res.Opaque != uint32(i) || string(res.Value) != "v" {
			t.Fatalf("pipelined GET %d: opaque %d value %q", i, res.Opaque, res.Value)
		}
	}
	waitFor(t, func() bool { return loopConns(srv) == len(cs)-1 })
	if res := cs[0].do(frame(protocol.OpGet, key(0), "", nil, 99, 0)); res.Opaque != 99 || string(res.Value) != "v" {
		t.Fatalf("GET after hand-off: opaque %d value %q", res.Opaque, res.Value)
	}
	for _, c := range cs {
		c.nc.Close()
	}
	waitFor(t, func() bool { return srv.currConns.Load() == 0 && loopConns(srv) == 0 })
}

// TestLargeResponses: a pipeline whose responses outgrow the socket's
// buffer, read only after it is all sent, gets every response in order;
// the connection serves on afterwards. With few large values one read's
// responses pass flushAt; with many small ones the writes fall short first.
// Either way an event loop hands the connection to a goroutine.
func TestLargeResponses(t *testing.T) {
	forEachMode(t, func(t *testing.T, mod func(*Config)) {
		for _, tc := range []struct {
			name       string
			size, gets int
		}{
			{"past flushAt", 500 << 10, 40},
			{"short writes", 700, 30000},
		} {
			t.Run(tc.name, func(t *testing.T) {
				srv, addr := testServer(t, mod)
				c := dial(t, addr)
				value := strings.Repeat("x", tc.size)
				c.do(frame(protocol.OpSet, "big", value, setExtras(0, 0), 1, 0))
				var batch [][]byte
				for i := range tc.gets {
					batch = append(batch, frame(protocol.OpGet, "big", "", nil, uint32(i), 0))
				}
				sent := make(chan error, 1)
				go func() {
					_, err := c.nc.Write(bytes.Join(batch, nil))
					sent <- err
				}()
				// The client reads nothing until the server has filled the
				// socket; an event loop must then have handed the
				// connection off (it cannot write the rest without waiting).
				// Polled, not slept: under -race filling takes a while.
				time.Sleep(100 * time.Millisecond)
				waitFor(t, func() bool { return loopConns(srv) == 0 })
				for i := range tc.gets {
					res := c.read()
					if res.Opaque != uint32(i) || len(res.Value) != len(value) {
						t.Fatalf("response %d: opaque %d, %d bytes", i, res.Opaque, len(res.Value))
					}
				}
				if err := <-sent; err != nil {
					t.Fatal(err)
				}
				if res := c.do(frame(protocol.OpNoop, "", "", nil, 7, 0)); res.Opaque != 7 {
					t.Fatalf("NOOP opaque %d", res.Opaque)
				}
				if got := srv.snapshot()[cCmdGet]; got != uint64(tc.gets) {
					t.Fatalf("cmd_get %d", got)
				}
				// /metrics counts each request once, however its response
				// was written.
				waitFor(t, func() bool { return srv.Metrics().Latency.Count == uint64(tc.gets)+2 })
				for _, oc := range srv.Metrics().Ops {
					if want := map[string]uint64{"GET": uint64(tc.gets), "SET": 1, "NOOP": 1}[oc.Opcode]; oc.Status != "success" || oc.Count != want {
						t.Errorf("%s %s counted %d times", oc.Opcode, oc.Status, oc.Count)
					}
				}
				if n := loopConns(srv); n != 0 {
					t.Fatalf("loops still hold %d connections", n)
				}
			})
		}
	})
}

// TestHalfClose: a client that sends its requests and then shuts down its
// sending side gets every response, then EOF.
func TestHalfClose(t *testing.T) {
	forEachMode(t, func(t *testing.T, mod func(*Config)) {
		srv, addr := testServer(t, mod)
		for round := range 20 {
			c := dial(t, addr)
			var batch [][]byte
			for i := range 100 {
				batch = append(batch, frame(protocol.OpSet, key(i), "v", setExtras(0, 0), uint32(i), 0))
			}
			c.send(batch...)
			if err := c.nc.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			for i := range 100 {
				if res := c.read(); res.Opaque != uint32(i) || res.Status() != protocol.StatusOK {
					t.Fatalf("round %d response %d: opaque %d status %v", round, i, res.Opaque, res.Status())
				}
			}
			c.expectClosed()
		}
		waitFor(t, func() bool { return srv.currConns.Load() == 0 })
	})
}

// TestCloseWithIdleConns: Close ends connections that sit idle on a loop.
func TestCloseWithIdleConns(t *testing.T) {
	srv, addr := testServer(t, nil)
	var cs []*client
	for range 4 {
		c := dial(t, addr)
		c.do(frame(protocol.OpNoop, "", "", nil, 1, 0))
		cs = append(cs, c)
	}
	srv.Close()
	for _, c := range cs {
		c.expectClosed()
	}
	waitFor(t, func() bool { return srv.currConns.Load() == 0 })
}

// BenchmarkConns runs GETs of 100-byte values over loopback from many
// connections at once with one request in flight each, as loadgen's
// c256-d1 does, with connections on the event loops and with a goroutine
// each. ns/op is per request, client included.
func BenchmarkConns(b *testing.B) {
	for _, conns := range []int{16, 256} {
		for _, mode := range []struct {
			name string
			mod  func(*Config)
		}{
			{"loops", nil},
			{"goroutines", func(cfg *Config) { cfg.goroutinePerConn = true }},
		} {
			b.Run(fmt.Sprintf("conns=%d/%s", conns, mode.name), func(b *testing.B) {
				_, addr := testServer(b, mode.mod)
				seed := dial(b, addr)
				seed.do(frame(protocol.OpSet, "key:00000001", strings.Repeat("v", 100), setExtras(0, 0), 1, 0))
				ncs := make([]net.Conn, conns)
				for i := range ncs {
					nc, err := net.Dial("tcp", addr)
					if err != nil {
						b.Fatal(err)
					}
					defer nc.Close()
					ncs[i] = nc
				}
				req := frame(protocol.OpGet, "key:00000001", "", nil, 1, 0)
				respLen := protocol.HeaderLen + 4 + 100
				var next sync.WaitGroup
				ops := make(chan struct{}, b.N)
				for range b.N {
					ops <- struct{}{}
				}
				close(ops)
				b.ResetTimer()
				for _, nc := range ncs {
					next.Go(func() {
						resp := make([]byte, respLen)
						for range ops {
							if _, err := nc.Write(req); err != nil {
								b.Error(err)
								return
							}
							if _, err := io.ReadFull(nc, resp); err != nil {
								b.Error(err)
								return
							}
							if !bytes.HasSuffix(resp, []byte(strings.Repeat("v", 100))) {
								b.Error("bad response")
								return
							}
						}
					})
				}
				next.Wait()
			})
		}
	}
}
