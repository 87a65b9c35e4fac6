package server

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"vbcache/protocol"
)

// The limits a server puts on its clients, each run on the event loops and
// on goroutines: -max-conns is TestMaxConns.

// TestIdleTimeout: a connection that sends nothing for IdleTimeout is
// closed and counted in idle_kicks; one that keeps sending is not, nor is
// a peer's, however long it idles.
func TestIdleTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	forEachMode(t, func(t *testing.T, mod func(*Config)) {
		srv, addr := testServer(t, func(cfg *Config) {
			if mod != nil {
				mod(cfg)
			}
			cfg.IdleTimeout = timeout
		})
		noop := frame(protocol.OpNoop, "", "", nil, 1, 0)
		busy := dial(t, addr)
		peer := dial(t, addr)
		if res := peer.do(frame(protocol.OpHello, peerAgent, "", nil, 1, 0)); res.Status() != protocol.StatusOK {
			t.Fatalf("HELLO: %#x", res.Status())
		}

		busy.do(noop)
		if mod == nil && runtime.GOOS == "linux" {
			if n := loopConns(srv); n != 2 {
				t.Fatalf("the event loops hold %d connections, want 2", n)
			}
		}

		// Keep busy busy until two idle connections, opened one after
		// the other, have been closed; by then peer has idled for more
		// than twice the timeout.
		stop, busyErr := make(chan struct{}), make(chan error, 1)
		go func() {
			tick := time.NewTicker(timeout / 6)
			defer tick.Stop()
			for {
				if err := ping(busy); err != nil {
					busyErr <- err
					return
				}
				select {
				case <-stop:
					busyErr <- nil
					return
				case <-tick.C:
				}
			}
		}()
		for range 2 {
			idle := dial(t, addr)
			idle.do(noop)
			idle.expectClosed()
		}
		close(stop)
		if err := <-busyErr; err != nil {
			t.Fatalf("busy connection: %v", err)
		}
		if n := srv.idleKicks.Load(); n != 2 {
			t.Errorf("idle_kicks = %d, want 2", n)
		}
		for name, c := range map[string]*client{"busy": busy, "peer": peer} {
			if res := c.do(noop); res.Status() != protocol.StatusOK {
				t.Errorf("%s connection: NOOP %#x", name, res.Status())
			}
		}
	})
}

// TestFrameLimit: a frame declaring a body over MaxItemSize plus header
// room is answered VALUE_TOO_LARGE; the connection goes on if the body is
// within skipFactor times that limit (memcached's behaviour, which clients
// rely on) and is closed beyond it, without the body being read.
func TestFrameLimit(t *testing.T) {
	const itemSize = 64 << 10
	limit := itemSize + headerRoom
	forEachMode(t, func(t *testing.T, mod func(*Config)) {
		_, addr := testServer(t, func(cfg *Config) {
			if mod != nil {
				mod(cfg)
			}
			cfg.MaxItemSize = itemSize
		})
		for _, tc := range []struct {
			name   string
			body   int
			closes bool
		}{
			{"at the limit", limit, false},
			{"just over the limit", limit + 1, false},
			{"at the skip bound", skipFactor * limit, false},
			{"over the skip bound", skipFactor*limit + 1, true},
			{"4 GiB", 1<<32 - 1, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := dial(t, addr)
				// A GET with a body: only the length matters here, and
				// only the header is sent before the answer is read.
				hdr := protocol.AppendHeader(nil, protocol.MagicRequest, protocol.OpGet, 0, 0, 0, 0, tc.body, 7, 0)
				c.send(hdr)
				if tc.body <= limit {
					// Within the limit the server waits for the body; send
					// it, and the GET is refused as malformed instead.
					c.send([]byte(strings.Repeat("x", tc.body)))
					if res := c.read(); res.Status() != protocol.StatusInvalidArgs || res.Opaque != 7 {
						t.Fatalf("status %#x opaque %d, want invalid arguments", res.Status(), res.Opaque)
					}
				} else if res := c.read(); res.Status() != protocol.StatusValueTooLarge || res.Opaque != 7 {
					t.Fatalf("status %#x opaque %d, want value too large", res.Status(), res.Opaque)
				}
				if tc.closes {
					c.expectClosed()
					return
				}
				if tc.body > limit {
					c.send(make([]byte, tc.body)) // skipped unread
				}
				if res := c.do(frame(protocol.OpNoop, "", "", nil, 8, 0)); res.Status() != protocol.StatusOK || res.Opaque != 8 {
					t.Fatalf("after the refusal: NOOP status %#x opaque %d", res.Status(), res.Opaque)
				}
			})
		}
	})
}

// ping sends c a NOOP and reads the answer; unlike client.do it may run
// outside the test's goroutine.
func ping(c *client) error {
	if _, err := c.nc.Write(frame(protocol.OpNoop, "", "", nil, 1, 0)); err != nil {
		return err
	}
	hdr := make([]byte, protocol.HeaderLen)
	if _, err := io.ReadFull(c.r, hdr); err != nil {
		return err
	}
	if h := protocol.ParseHeader(hdr); h.Status() != protocol.StatusOK {
		return fmt.Errorf("NOOP: status %#x", h.Status())
	}
	return nil
}
