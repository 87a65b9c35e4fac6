package server

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"vbcache/protocol"
	"vbcache/vbucket"
)

// copyLog is a fake replica's record of when each key's copy arrived.
type copyLog struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (l *copyLog) arrived(key string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.at[key]
	return at, ok
}

// holdingServer starts a node that holds every vbucket active, with a fake
// replica that acknowledges its copies and logs when they arrive, and a
// copy hold of hold.
func holdingServer(t *testing.T, hold time.Duration) (*Server, string, *copyLog) {
	t.Helper()
	log := &copyLog{at: map[string]time.Time{}}
	replica := fakePeer(t, func(h protocol.Header, body []byte) []byte {
		switch h.Opcode {
		case protocol.OpSetQWithMeta, protocol.OpDelQWithMeta:
			key := string(body[h.ExtrasLen : int(h.ExtrasLen)+int(h.KeyLen)])
			log.mu.Lock()
			log.at[key] = time.Now()
			log.mu.Unlock()
			return nil // quiet: the NOOP after them acknowledges them
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
		cfg.Cluster, cfg.VBuckets, cfg.CopyHold = staticCluster{name: "a", m: m}, n, hold
	})
	return srv, addr, log
}

// timedSet sends a SET and returns how long its response took.
func timedSet(t *testing.T, c *client, key string) time.Duration {
	t.Helper()
	start := time.Now()
	if res := c.do(frame(protocol.OpSet, key, "v", setExtras(0, 0), 0, 0)); res.Status() != protocol.StatusOK {
		t.Fatalf("SET %s: status 0x%02x", key, res.Status())
	}
	return time.Since(start)
}

// TestCopyHold: a write's copy waits while a client the node has just
// answered is expected back, and goes as soon as that client sends; a
// client that does not come back costs one hold, and one that came back
// slower than the hold is not waited for.
func TestCopyHold(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the hold expects only clients of event loops (Linux)")
	}
	const hold = 500 * time.Millisecond
	_, addr, log := holdingServer(t, hold)
	x, y := dial(t, addr), dial(t, addr)

	// x writes twice in quick succession: after the second it is expected.
	timedSet(t, x, "x1")
	timedSet(t, x, "x2")

	// y's write is held for x, until x sends something.
	const xWaits = 100 * time.Millisecond
	took := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		y.send(frame(protocol.OpSet, "y1", "v", setExtras(0, 0), 0, 0))
		y.read()
		took <- time.Since(start)
	}()
	time.Sleep(xWaits)
	if _, ok := log.arrived("y1"); ok {
		t.Fatal("y1's copy reached the replica while x was expected back")
	}
	xSent := time.Now()
	if res := x.do(frame(protocol.OpGet, "x1", "", nil, 0, 0)); res.Status() != protocol.StatusOK {
		t.Fatalf("GET x1: status 0x%02x", res.Status())
	}
	d := <-took
	if at, ok := log.arrived("y1"); !ok || at.Before(xSent) {
		t.Fatalf("y1's copy arrived at %v (ok %v), x sent at %v: not held for x", at, ok, xSent)
	}
	if d < xWaits || d >= hold-100*time.Millisecond {
		t.Fatalf("y1 took %v: want at least %v (held for x) and well under the hold of %v (x came back)", d, xWaits, hold)
	}

	// x writes again and then sends nothing: y's write waits out the hold,
	// once.
	timedSet(t, x, "x3")
	if d := timedSet(t, y, "y2"); d < hold-50*time.Millisecond {
		t.Fatalf("y2 took %v: want the hold of %v, x being expected", d, hold)
	}
	if d := timedSet(t, y, "y3"); d >= hold/2 {
		t.Fatalf("y3 took %v: x was forgotten after one hold, want no hold", d)
	}

	// x comes back slower than the hold: it is no longer expected.
	time.Sleep(hold + 100*time.Millisecond)
	timedSet(t, x, "x4")
	if d := timedSet(t, y, "y4"); d >= hold/2 {
		t.Fatalf("y4 took %v: x came back slower than the hold last time, want no hold", d)
	}
	for _, k := range []string{"x1", "x2", "x3", "x4", "y1", "y2", "y3", "y4"} {
		if _, ok := log.arrived(k); !ok {
			t.Errorf("the replica has no copy of %s", k)
		}
	}
}

// TestExpected: arrivals counted in a generation that was forgotten do not
// count in the next, and the last arrival, or a forget, wakes the holders.
func TestExpected(t *testing.T) {
	woken := 0
	e := newExpected(time.Millisecond, func() { woken++ })
	g1, g2 := e.add(), e.add()
	if !e.waiting() || g1 != g2 {
		t.Fatalf("after two adds: waiting %v, generations %d and %d", e.waiting(), g1, g2)
	}
	e.arrived(g1)
	if !e.waiting() {
		t.Fatal("not waiting with one client still expected")
	}
	e.holders.Add(1)
	e.arrived(g2)
	if e.waiting() || woken != 1 {
		t.Fatalf("after the last arrival: waiting %v, woken %d times, want false and 1", e.waiting(), woken)
	}
	g3 := e.add()
	e.forget()
	if e.waiting() || woken != 2 {
		t.Fatalf("after forget: waiting %v, woken %d times, want false and 2", e.waiting(), woken)
	}
	g4 := e.add()
	if g4 == g3 {
		t.Fatalf("forget kept the generation %d", g3)
	}
	e.arrived(g3) // a client of the forgotten generation arrives late
	if !e.waiting() {
		t.Fatal("a late arrival from a forgotten generation counted in the new one")
	}
	e.arrived(g4)
	if e.waiting() || woken != 3 {
		t.Fatalf("after the new generation's arrival: waiting %v, woken %d times", e.waiting(), woken)
	}
}
