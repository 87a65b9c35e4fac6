package server

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"vbcache/protocol"
	"vbcache/vbucket"
)

// TestStreamLostStartsOver: a copy lost with its connection (the replica
// never got it, though the client's write was acknowledged) reaches the
// replica anyway: the streams to it start over with a reset and a
// backfill, which is tried again until it succeeds. Two real servers, the
// active a and its replica b, with a proxy between them that can drop what
// a sends next, cut the connection and refuse new ones for a while.
func TestStreamLostStartsOver(t *testing.T) {
	const n = 16
	rows := make([][]int, n)
	for i := range rows {
		rows[i] = []int{0, 1}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &vbucket.Map{Rev: 1, Replicas: 1, VBuckets: rows,
		Servers: []vbucket.Server{{Name: "a", KV: "127.0.0.1:1"}, {Name: "b", KV: l.Addr().String()}}}
	b, bAddr := testServer(t, func(cfg *Config) {
		cfg.Cluster, cfg.VBuckets = staticCluster{name: "b", m: m}, n
	})
	px := cutProxy(t, l, bAddr)
	_, aAddr := testServer(t, func(cfg *Config) {
		cfg.Cluster, cfg.VBuckets = staticCluster{name: "a", m: m}, n
	})
	onB := func(key string) bool {
		_, _, ok := b.cfg.Store.Get([]byte(key), nil)
		return ok
	}
	c := dial(t, aAddr)
	if res := c.do(frame(protocol.OpSet, "before", "v", setExtras(0, 0), 1, 0)); res.Status() != protocol.StatusOK {
		t.Fatalf("SET before: status 0x%02x", res.Status())
	}
	waitFor(t, func() bool { return onB("before") })

	// The copy of the next write is lost with its connection, and the
	// first tries to start the streams over fail.
	px.refuseUntil.Store(time.Now().Add(1500 * time.Millisecond).UnixNano())
	px.drop.Store(true)
	if res := c.do(frame(protocol.OpSet, "lost", "v", setExtras(0, 0), 2, 0)); res.Status() != protocol.StatusOK {
		t.Fatalf("SET lost: status 0x%02x; the write stands on a", res.Status())
	}
	if px.drop.Load() {
		t.Fatal("the proxy dropped nothing")
	}
	waitFor(t, func() bool { return onB("lost") && onB("before") })
	// Tries back off: 200, 400, 800 ms... not a scan of the store and a
	// dial after another.
	if n := px.refused.Load(); n == 0 || n > 10 {
		t.Fatalf("%d tries to start the streams over refused in 1.5 s, want 1 to 10", n)
	}
}

// proxyControl steers cutProxy: while drop is set, the next bytes a client
// sends are discarded and the connection is cut, and drop is cleared;
// until refuseUntil (Unix nanoseconds), new connections are closed at once
// and counted in refused.
type proxyControl struct {
	drop        atomic.Bool
	refuseUntil atomic.Int64
	refused     atomic.Int64
}

// cutProxy serves l, forwarding each connection to the address to.
func cutProxy(t *testing.T, l net.Listener, to string) *proxyControl {
	t.Cleanup(func() { l.Close() })
	px := new(proxyControl)
	drop := &px.drop
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			if time.Now().UnixNano() < px.refuseUntil.Load() {
				px.refused.Add(1)
				in.Close()
				continue
			}
			out, err := net.Dial("tcp", to)
			if err != nil {
				in.Close()
				continue
			}
			go func() {
				io.Copy(in, out)
				in.Close()
			}()
			go func() {
				defer out.Close()
				defer in.Close()
				buf := make([]byte, 64<<10)
				for {
					k, err := in.Read(buf)
					if err != nil || drop.CompareAndSwap(true, false) {
						return
					}
					if _, err := out.Write(buf[:k]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return px
}

// TestBackfillBacksOff: a backfill to a replica that cannot be reached is
// tried again with growing delays, each try a scan of the store, until it
// succeeds. The map gains the replica b behind a proxy that refuses
// connections for 1.5 s.
func TestBackfillBacksOff(t *testing.T) {
	const n = 16
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	withReplica := func(rev int64, replicas int) *vbucket.Map {
		rows := make([][]int, n)
		for i := range rows {
			rows[i] = []int{0, 1}[:1+replicas]
		}
		return &vbucket.Map{Rev: rev, Replicas: replicas, VBuckets: rows,
			Servers: []vbucket.Server{{Name: "a", KV: "127.0.0.1:1"}, {Name: "b", KV: l.Addr().String()}}}
	}
	b, bAddr := testServer(t, func(cfg *Config) {
		cfg.Cluster, cfg.VBuckets = staticCluster{name: "b", m: withReplica(2, 1)}, n
	})
	px := cutProxy(t, l, bAddr)
	cl := newMovingCluster("a", withReplica(1, 0))
	_, aAddr := testServer(t, func(cfg *Config) {
		cfg.Cluster, cfg.VBuckets = cl, n
	})
	c := dial(t, aAddr)
	if res := c.do(frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 0)); res.Status() != protocol.StatusOK {
		t.Fatalf("SET: status 0x%02x", res.Status())
	}
	px.refuseUntil.Store(time.Now().Add(1500 * time.Millisecond).UnixNano())
	cl.set(withReplica(2, 1))
	waitFor(t, func() bool {
		_, _, ok := b.cfg.Store.Get([]byte("k"), nil)
		return ok
	})
	if n := px.refused.Load(); n == 0 || n > 10 {
		t.Fatalf("%d backfill tries refused in 1.5 s, want 1 to 10", n)
	}
}
