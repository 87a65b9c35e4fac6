package server

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"vbcache/protocol"
	"vbcache/store"
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

// replicaConn returns a connection of a cluster node that holds a replica
// of every vbucket (another node, a, holds them active), as another
// node's stream connection to it: a peer.
func replicaConn(t testing.TB) (*Server, *conn) {
	t.Helper()
	const n = 16
	rows := make([][]int, n)
	for i := range rows {
		rows[i] = []int{0, 1}
	}
	m := &vbucket.Map{Rev: 1, Replicas: 1, VBuckets: rows,
		Servers: []vbucket.Server{{Name: "a", KV: "127.0.0.1:1"}, {Name: "b", KV: "127.0.0.1:2"}}}
	srv, _ := testServer(t, func(cfg *Config) {
		cfg.Cluster, cfg.VBuckets = staticCluster{name: "b", m: m}, n
	})
	c := newConn(srv, nil)
	srv.ownStats(c)
	c.peer = true
	return srv, c
}

// copyFrame returns a stream message op (SETQ_WITH_META or
// DELQ_WITH_META) for key in vbucket vb with CAS cas.
func copyFrame(op protocol.Opcode, vb uint16, key, value string, cas uint64) []byte {
	extras := make([]byte, 24)
	binary.BigEndian.PutUint64(extras[16:], cas)
	return protocol.AppendFrame(nil, &protocol.Frame{Magic: protocol.MagicRequest, Opcode: op, VBucket: vb,
		Extras: extras, Key: []byte(key), Value: []byte(value)})
}

// TestApplyCopyAllocs pins a replica's applying of copies, parse to
// store, at zero allocations: a newer SETQ_WITH_META replaces the item
// and an older one is ignored, both answering nothing, and a
// DELQ_WITH_META of a key not held does nothing.
func TestApplyCopyAllocs(t *testing.T) {
	srv, c := replicaConn(t)
	st := srv.cfg.Store
	value := strings.Repeat("v", 100)
	if ok, err := st.SetWithMeta([]byte("key"), []byte(value), store.Meta{CAS: st.NextCAS() + 1}); !ok || err != nil {
		t.Fatalf("storing key: %v", err)
	}
	var cas uint64 // the newest copy's
	for _, tt := range []struct {
		name  string
		f     []byte
		newer bool // give f a CAS above every other before each run
		check func() bool
	}{
		{"setq newer", copyFrame(protocol.OpSetQWithMeta, 3, "key", value, 0), true,
			func() bool { _, m, _ := st.Get([]byte("key"), nil); return m.CAS == cas }},
		{"setq older", copyFrame(protocol.OpSetQWithMeta, 3, "key", "old", 1), false,
			func() bool { v, _, _ := st.Get([]byte("key"), nil); return string(v) == value }},
		{"delq miss", copyFrame(protocol.OpDelQWithMeta, 3, "nope", "", 0), true,
			func() bool { _, _, ok := st.Get([]byte("nope"), nil); return !ok }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := testing.AllocsPerRun(1000, func() {
				if tt.newer {
					cas = st.NextCAS() + 1
					binary.BigEndian.PutUint64(tt.f[protocol.HeaderLen+16:], cas)
				}
				req, _, _ := protocol.Parse(tt.f, protocol.MagicRequest, srv.maxBody)
				c.wbuf = c.wbuf[:0]
				c.handle(&req)
			})
			if n != 0 {
				t.Fatalf("%s allocates %v times", tt.name, n)
			}
			if len(c.wbuf) != 0 {
				t.Fatalf("answered %x; a quiet copy that applies is not answered", c.wbuf)
			}
			if !tt.check() {
				t.Fatal("the store does not hold what the copies say")
			}
		})
	}
}

// BenchmarkApplyCopy is a replica applying SETQ_WITH_META copies of
// overwrites, as a stream delivers them: parse, route, store.
func BenchmarkApplyCopy(b *testing.B) {
	srv, c := replicaConn(b)
	const keys = 1 << 14
	frames := make([][]byte, keys)
	value := strings.Repeat("v", 100)
	for i := range frames {
		key := fmt.Sprintf("key:%08d", i)
		frames[i] = copyFrame(protocol.OpSetQWithMeta, vbucket.VBucket([]byte(key), 16), key, value, 1)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		f := frames[i%keys]
		binary.BigEndian.PutUint64(f[protocol.HeaderLen+16:], srv.cfg.Store.NextCAS()+1)
		req, _, _ := protocol.Parse(f, protocol.MagicRequest, srv.maxBody)
		c.wbuf = c.wbuf[:0]
		c.handle(&req)
		i++
	}
}
