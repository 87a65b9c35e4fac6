package server

import (
	"fmt"
	"io"
	"runtime"
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
