package server

import (
	"context"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"vbcache/protocol"
	"vbcache/vbucket"
)

// These tests forward a legacy client's requests to a fake owner, in both
// serving modes: on Linux the client's connection parks on its event loop
// while it waits (loop_linux.go), elsewhere and with goroutinePerConn it
// waits on its goroutine.

// staticCluster is a Cluster whose map never changes.
type staticCluster struct {
	name string
	m    *vbucket.Map
}

func (s staticCluster) Name() string      { return s.name }
func (s staticCluster) Map() *vbucket.Map { return s.m }
func (s staticCluster) WaitMap(ctx context.Context, after int64) *vbucket.Map {
	if s.m.Rev <= after {
		<-ctx.Done()
	}
	return s.m
}

// forwardingServer starts a cluster node that holds no vbucket: the node
// at owner holds them all, with no replicas.
func forwardingServer(t *testing.T, mod func(*Config), owner string) (*Server, string) {
	t.Helper()
	const n = 16
	rows := make([][]int, n)
	for i := range rows {
		rows[i] = []int{1}
	}
	m := &vbucket.Map{Rev: 1, Servers: []vbucket.Server{{Name: "a", KV: "127.0.0.1:1"}, {Name: "b", KV: owner}}, VBuckets: rows}
	return testServer(t, func(cfg *Config) {
		cfg.Cluster, cfg.VBuckets = staticCluster{name: "a", m: m}, n
		if mod != nil {
			mod(cfg)
		}
	})
}

// heldPeer is a fake owner that answers a GET with "value of <key>" once
// the test lets it: release lets the next request through. It answers
// HELLO at once.
func heldPeer(t *testing.T) (addr string, received <-chan string, release chan<- struct{}) {
	rcv, rel := make(chan string, 16), make(chan struct{}, 16)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	addr = fakePeer(t, func(h protocol.Header, body []byte) []byte {
		if h.Opcode == protocol.OpHello {
			return okResponse(h)
		}
		key := string(body[h.ExtrasLen : int(h.ExtrasLen)+int(h.KeyLen)])
		rcv <- key
		select {
		case <-rel:
		case <-stop:
			return nil
		}
		return protocol.AppendFrame(nil, &protocol.Frame{
			Magic: protocol.MagicResponse, Opcode: h.Opcode, Opaque: h.Opaque, Value: []byte("value of " + key),
		})
	})
	return addr, rcv, rel
}

// expectKey waits for the fake owner to receive a request for key.
func expectKey(t *testing.T, received <-chan string, key string) {
	t.Helper()
	select {
	case k := <-received:
		if k != key {
			t.Fatalf("owner received %q, want %q", k, key)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("owner did not receive %q", key)
	}
}

// TestForwardWhileRequestsArrive: requests that arrive while a connection
// waits for the owner are served after it, in order: on an event loop,
// they arrive while the connection is parked, and resume must have them
// reported again. The connection stays on its loop throughout. A client
// that then closes its end gets every answer before the connection
// closes.
func TestForwardWhileRequestsArrive(t *testing.T) {
	forEachMode(t, func(t *testing.T, mod func(*Config)) {
		owner, received, release := heldPeer(t)
		srv, addr := forwardingServer(t, mod, owner)
		c := dial(t, addr)
		for round := range 2 {
			c.send(frame(protocol.OpGet, "first", "", nil, 1, 0))
			expectKey(t, received, "first")
			// The owner holds "first": these wait in the socket, and in
			// the second round so does the end of the client's input.
			c.send(frame(protocol.OpGet, "second", "", nil, 2, 0), frame(protocol.OpNoop, "", "", nil, 3, 0))
			if round == 1 {
				c.nc.(*net.TCPConn).CloseWrite()
			}
			time.Sleep(50 * time.Millisecond)
			release <- struct{}{}
			expectKey(t, received, "second")
			release <- struct{}{}
			for i, want := range []string{"value of first", "value of second", ""} {
				res := c.read()
				if res.Opaque != uint32(i+1) || res.Status() != protocol.StatusOK || string(res.Value) != want {
					t.Fatalf("round %d, response %d: opaque %d status 0x%02x value %q, want %q", round, i+1, res.Opaque, res.Status(), res.Value, want)
				}
			}
			if round == 0 && mod == nil && runtime.GOOS == "linux" && loopConns(srv) != 1 {
				t.Fatalf("loops hold %d connections, want the client's", loopConns(srv))
			}
		}
		c.expectClosed()
		waitFor(t, func() bool { return srv.currConns.Load() == 0 })
	})
}

// TestForwardToStuckOwner: an owner that takes requests and never answers
// fails the request with TMPFAIL after forwardTimeout, not never.
func TestForwardToStuckOwner(t *testing.T) {
	if testing.Short() {
		t.Skip("waits forwardTimeout")
	}
	forEachMode(t, func(t *testing.T, mod func(*Config)) {
		t.Parallel()
		owner, received, _ := heldPeer(t) // never released
		_, addr := forwardingServer(t, mod, owner)
		c := dial(t, addr)
		start := time.Now()
		c.send(frame(protocol.OpGet, "k", "", nil, 7, 0))
		expectKey(t, received, "k")
		res := c.read() // dial's deadline: 10 s
		took := time.Since(start)
		if res.Opaque != 7 || res.Status() != protocol.StatusTempFailure {
			t.Fatalf("opaque %d status 0x%02x, want 7 and TMPFAIL", res.Opaque, res.Status())
		}
		if took < forwardTimeout || took > forwardTimeout+3*peerStallCheck {
			t.Fatalf("answered after %v, want %v to %v", took, forwardTimeout, forwardTimeout+3*peerStallCheck)
		}
	})
}

// TestShutdownAnswersWaiting: Shutdown lets a connection waiting for the
// owner get its answer before it closes.
func TestShutdownAnswersWaiting(t *testing.T) {
	forEachMode(t, func(t *testing.T, mod func(*Config)) {
		owner, received, release := heldPeer(t)
		srv, addr := forwardingServer(t, mod, owner)
		c := dial(t, addr)
		c.send(frame(protocol.OpGet, "k", "", nil, 5, 0))
		expectKey(t, received, "k")
		var wg sync.WaitGroup
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		})
		time.Sleep(100 * time.Millisecond) // the loops have closed
		release <- struct{}{}
		if res := c.read(); res.Opaque != 5 || string(res.Value) != "value of k" {
			t.Fatalf("opaque %d status 0x%02x value %q", res.Opaque, res.Status(), res.Value)
		}
		c.expectClosed()
		wg.Wait()
	})
}

// TestForwardDisowned: a request the owner disowns is routed again, which
// waits for a newer map: a parked connection moves to a goroutine for
// that, and the client gets the answer of the second try.
func TestForwardDisowned(t *testing.T) {
	forEachMode(t, func(t *testing.T, mod func(*Config)) {
		tries := 0
		owner := fakePeer(t, func(h protocol.Header, _ []byte) []byte {
			if h.Opcode == protocol.OpHello {
				return okResponse(h)
			}
			if tries++; tries == 1 {
				return protocol.AppendError(nil, h.Opcode, protocol.StatusNotMyVBucket, h.Opaque)
			}
			return protocol.AppendFrame(nil, &protocol.Frame{
				Magic: protocol.MagicResponse, Opcode: h.Opcode, Opaque: h.Opaque, Value: []byte("second try"),
			})
		})
		srv, addr := forwardingServer(t, mod, owner)
		c := dial(t, addr)
		if res := c.do(frame(protocol.OpGet, "k", "", nil, 9, 0)); res.Opaque != 9 || string(res.Value) != "second try" {
			t.Fatalf("opaque %d status 0x%02x value %q", res.Opaque, res.Status(), res.Value)
		}
		if n := loopConns(srv); n != 0 {
			t.Fatalf("loops hold %d connections after a reroute, want none", n)
		}
		if res := c.do(frame(protocol.OpNoop, "", "", nil, 10, 0)); res.Opaque != 10 {
			t.Fatalf("NOOP after the reroute: opaque %d", res.Opaque)
		}
	})
}

// TestAsyncBackPressure: with async replication a client's write is
// acknowledged before its copy reaches the replica, until the replica
// falls peerBacklog behind: then writes wait for their copies. Here the
// replica stops reading, so a write waits forwardTimeout for its copy (on
// an event loop: parked, then on a goroutine, see checkParked), then
// stands and counts a replication error.
func TestAsyncBackPressure(t *testing.T) {
	if testing.Short() {
		t.Skip("waits forwardTimeout")
	}
	forEachMode(t, func(t *testing.T, mod func(*Config)) {
		t.Parallel()
		stop := make(chan struct{})
		t.Cleanup(func() { close(stop) })
		replica := fakePeer(t, func(h protocol.Header, _ []byte) []byte {
			if h.Opcode != protocol.OpHello {
				<-stop // reads nothing more
			}
			return okResponse(h)
		})
		const n = 16
		rows := make([][]int, n)
		for i := range rows {
			rows[i] = []int{0, 1}
		}
		m := &vbucket.Map{Rev: 1, Replicas: 1, VBuckets: rows,
			Servers: []vbucket.Server{{Name: "a", KV: "127.0.0.1:1"}, {Name: "b", KV: replica}}}
		srv, addr := testServer(t, func(cfg *Config) {
			cfg.Cluster, cfg.VBuckets, cfg.AsyncReplication = staticCluster{name: "a", m: m}, n, true
			if mod != nil {
				mod(cfg)
			}
		})
		c := dial(t, addr)
		c.nc.SetDeadline(time.Now().Add(30 * time.Second))
		value := string(make([]byte, 256<<10))
		// Socket buffers take some megabytes, then peerBacklog more; 64
		// writes of 256 KiB are 16 MiB.
		for i := range 64 {
			start := time.Now()
			res := c.do(frame(protocol.OpSet, key(i), value, setExtras(0, 0), uint32(i), 0))
			took := time.Since(start)
			if res.Status() != protocol.StatusOK || res.Opaque != uint32(i) {
				t.Fatalf("SET %d: status 0x%02x opaque %d", i, res.Status(), res.Opaque)
			}
			if took < time.Second {
				continue
			}
			if i*len(value) < peerBacklog {
				t.Fatalf("SET %d waited %v with less than peerBacklog sent", i, took)
			}
			// One forwardTimeout for the batch, however it was spent.
			if took < forwardTimeout || took > forwardTimeout+3*time.Second || srv.stats.replErrors.Load() == 0 {
				t.Fatalf("SET %d waited %v, want %v to %v; replication errors %d",
					i, took, forwardTimeout, forwardTimeout+3*time.Second, srv.stats.replErrors.Load())
			}
			if res := c.do(frame(protocol.OpGet, key(i), "", nil, 0, 0)); len(res.Value) != len(value) {
				t.Fatalf("GET of the write that waited: status 0x%02x, %d bytes", res.Status(), len(res.Value))
			}
			return
		}
		t.Fatal("no write waited for its copy")
	})
}

// movingCluster is a Cluster whose map the test replaces.
type movingCluster struct {
	name    string
	mu      sync.Mutex
	m       *vbucket.Map
	changed chan struct{} // closed when m is replaced
}

func newMovingCluster(name string, m *vbucket.Map) *movingCluster {
	return &movingCluster{name: name, m: m, changed: make(chan struct{})}
}

func (c *movingCluster) Name() string { return c.name }

func (c *movingCluster) Map() *vbucket.Map {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m
}

func (c *movingCluster) WaitMap(ctx context.Context, after int64) *vbucket.Map {
	for {
		c.mu.Lock()
		m, changed := c.m, c.changed
		c.mu.Unlock()
		if m.Rev > after {
			return m
		}
		select {
		case <-ctx.Done():
			return m
		case <-changed:
		}
	}
}

func (c *movingCluster) set(m *vbucket.Map) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = m
	close(c.changed)
	c.changed = make(chan struct{})
}

// TestLeavingOwnerAnswers: a request forwarded to an owner that then
// leaves the map gets that owner's answer, which arrives after the map
// changed, rather than a failure: the connection to a departed node stays
// open for the answers it owes (peers.retain).
func TestLeavingOwnerAnswers(t *testing.T) {
	forEachMode(t, func(t *testing.T, mod func(*Config)) {
		owner, received, release := heldPeer(t)
		const n = 16
		mapOwnedBy := func(rev int64, kv string) *vbucket.Map {
			rows := make([][]int, n)
			for i := range rows {
				rows[i] = []int{1}
			}
			return &vbucket.Map{Rev: rev, VBuckets: rows,
				Servers: []vbucket.Server{{Name: "a", KV: "127.0.0.1:1"}, {Name: "b", KV: kv}}}
		}
		cl := newMovingCluster("a", mapOwnedBy(1, owner))
		srv, addr := testServer(t, func(cfg *Config) {
			cfg.Cluster, cfg.VBuckets = cl, n
			if mod != nil {
				mod(cfg)
			}
		})
		c := dial(t, addr)
		c.send(frame(protocol.OpGet, "k", "", nil, 4, 0))
		expectKey(t, received, "k")
		// The owner leaves: another node, never asked, holds everything.
		cl.set(mapOwnedBy(2, "127.0.0.1:2"))
		waitFor(t, func() bool { return len(srv.peers.lag()) == 0 })
		release <- struct{}{}
		if res := c.read(); res.Opaque != 4 || res.Status() != protocol.StatusOK || string(res.Value) != "value of k" {
			t.Fatalf("opaque %d status 0x%02x value %q, want the departed owner's answer", res.Opaque, res.Status(), res.Value)
		}
		waitFor(t, func() bool {
			srv.peers.mu.Lock()
			defer srv.peers.mu.Unlock()
			for _, pc := range srv.peers.retired {
				if !pc.failed() {
					return false
				}
			}
			return true
		})
	})
}

// TestSettled: a batch is settled only when every call is complete and
// none was disowned; one resumed with a call outstanding is not (see
// settledCall), so it finishes on a goroutine rather than crash.
func TestSettled(t *testing.T) {
	srv, _ := testServer(t, nil)
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	c := newConn(srv, a)
	ok := protocol.AppendHeader(nil, protocol.MagicResponse, protocol.OpGet, 0, 0, 0, 0, 0, 0, 0)
	nmvb := protocol.AppendHeader(nil, protocol.MagicResponse, protocol.OpGet, 0, 0, 0, uint16(protocol.StatusNotMyVBucket), 0, 0, 0)
	fwd, copied := newCall(nil), newCall(nil)
	c.slots = []slot{{call: fwd}, {repl: []*call{copied}}}
	if c.settled() {
		t.Fatal("settled with both calls outstanding")
	}
	fwd.complete(ok, nil)
	if c.settled() {
		t.Fatal("settled with a copy outstanding")
	}
	copied.complete(nmvb, nil)
	if c.settled() {
		t.Fatal("settled with a copy refused NOT_MY_VBUCKET")
	}
	copied = newCall(nil)
	copied.complete(ok, nil)
	c.slots[1].repl[0] = copied
	if !c.settled() {
		t.Fatal("not settled with every call complete and accepted")
	}
}
