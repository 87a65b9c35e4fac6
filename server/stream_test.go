package server

import (
	"io"
	"net"
	"sync/atomic"
	"testing"

	"vbcache/protocol"
	"vbcache/vbucket"
)

// TestStreamLostStartsOver: a copy lost with its connection (the replica
// never got it, though the client's write was acknowledged) reaches the
// replica anyway: the streams to it start over with a reset and a
// backfill. Two real servers, the active a and its replica b, with a
// proxy between them that can drop what a sends next and cut the
// connection.
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
	drop := cutProxy(t, l, bAddr)
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

	drop.Store(true) // the copy of the next write is lost with its connection
	if res := c.do(frame(protocol.OpSet, "lost", "v", setExtras(0, 0), 2, 0)); res.Status() != protocol.StatusOK {
		t.Fatalf("SET lost: status 0x%02x; the write stands on a", res.Status())
	}
	if drop.Load() {
		t.Fatal("the proxy dropped nothing")
	}
	waitFor(t, func() bool { return onB("lost") && onB("before") })
}

// cutProxy serves l, forwarding each connection to the address to. While
// drop is set, the next bytes a client sends are discarded and the
// connection is cut, and drop is cleared.
func cutProxy(t *testing.T, l net.Listener, to string) (drop *atomic.Bool) {
	t.Cleanup(func() { l.Close() })
	drop = new(atomic.Bool)
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
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
	return drop
}
