package server

import (
	"fmt"
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

// holdingServer starts a node that holds every vbucket active with a copy
// hold of hold. Its replicas are two fake ones, for the even and the odd
// vbuckets, which acknowledge the copies and log when they arrive.
func holdingServer(t *testing.T, hold time.Duration) (*Server, string, *copyLog) {
	t.Helper()
	log := &copyLog{at: map[string]time.Time{}}
	replica := func() string {
		return fakePeer(t, func(h protocol.Header, body []byte) []byte {
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
	}
	rows := make([][]int, holdVBuckets)
	for i := range rows {
		rows[i] = []int{0, 1 + i%2}
	}
	m := &vbucket.Map{Rev: 1, Replicas: 1, VBuckets: rows,
		Servers: []vbucket.Server{{Name: "a", KV: "127.0.0.1:1"}, {Name: "b", KV: replica()}, {Name: "c", KV: replica()}}}
	srv, addr := testServer(t, func(cfg *Config) {
		cfg.Cluster, cfg.VBuckets, cfg.CopyHold = staticCluster{name: "a", m: m}, holdVBuckets, hold
	})
	return srv, addr, log
}

const holdVBuckets = 16

// replicaKey returns a key named after name whose copies go to replica
// r (0 or 1) of holdingServer.
func replicaKey(name string, r int) string {
	for i := 0; ; i++ {
		k := fmt.Sprintf("%s-%d", name, i)
		if int(vbucket.VBucket([]byte(k), holdVBuckets))%2 == r {
			return k
		}
	}
}

// timedSets sends a SET of each key in one write and returns how long
// their responses took.
func timedSets(t *testing.T, c *client, keys ...string) time.Duration {
	t.Helper()
	var frames [][]byte
	for _, k := range keys {
		frames = append(frames, frame(protocol.OpSet, k, "v", setExtras(0, 0), 0, 0))
	}
	start := time.Now()
	c.send(frames...)
	for _, k := range keys {
		if res := c.read(); res.Status() != protocol.StatusOK {
			t.Fatalf("SET %s: status 0x%02x", k, res.Status())
		}
	}
	return time.Since(start)
}

// TestCopyHold: copies for both replicas wait while a client the node has
// just answered is expected back, and go as soon as that client sends;
// neither copies for one replica alone nor a client that came back slower
// than half the hold are waited for; a client that does not come back
// costs one hold, after which no writer holds for a while.
func TestCopyHold(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the hold expects only clients of event loops (Linux)")
	}
	const hold = 500 * time.Millisecond
	srv, addr, log := holdingServer(t, hold)
	x, y := dial(t, addr), dial(t, addr)
	e := srv.peers.expected
	xk := func(i int) string { return replicaKey(fmt.Sprint("x", i), 0) }
	yk := func(i int) []string {
		return []string{replicaKey(fmt.Sprint("y", i), 0), replicaKey(fmt.Sprint("y", i), 1)}
	}

	// x writes twice in quick succession: after the second it is expected.
	timedSets(t, x, xk(1))
	timedSets(t, x, xk(2))

	// y's writes, one for each replica, are held for x until x sends.
	const xWaits = 100 * time.Millisecond
	took := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		y.send(frame(protocol.OpSet, yk(1)[0], "v", setExtras(0, 0), 0, 0), frame(protocol.OpSet, yk(1)[1], "v", setExtras(0, 0), 0, 0))
		y.read()
		y.read()
		took <- time.Since(start)
	}()
	time.Sleep(xWaits)
	for _, k := range yk(1) {
		if _, ok := log.arrived(k); ok {
			t.Fatalf("%s's copy reached its replica while x was expected back", k)
		}
	}
	xSent := time.Now()
	timedSets(t, x, xk(3))
	d := <-took
	for _, k := range yk(1) {
		if at, ok := log.arrived(k); !ok || at.Before(xSent) {
			t.Fatalf("%s's copy arrived at %v (ok %v), x sent at %v: not held for x", k, at, ok, xSent)
		}
	}
	if d < xWaits || d >= hold-100*time.Millisecond {
		t.Fatalf("y's writes took %v: want at least %v (held for x) and well under the hold of %v (x came back)", d, xWaits, hold)
	}
	if n := e.holds.Load(); n == 0 {
		t.Fatal("no hold counted")
	}

	// x, expected again, sends nothing: a write for one replica alone is
	// not held.
	if d := timedSets(t, y, replicaKey("y2", 1)); d >= hold/2 {
		t.Fatalf("a write for one replica took %v: want no hold", d)
	}

	// x comes back after more than half the hold: it is no longer expected.
	time.Sleep(hold/2 + 50*time.Millisecond)
	timedSets(t, x, xk(4))
	if d := timedSets(t, y, yk(3)...); d >= hold/2 {
		t.Fatalf("y's writes took %v: x came back slower than half the hold, want no hold", d)
	}

	// x is quick again, then sends nothing: y's writes wait out the hold,
	// once, and then no writer holds for a while, though x is expected.
	timedSets(t, x, xk(5))
	timedSets(t, x, xk(6))
	if d := timedSets(t, y, yk(4)...); d < hold-50*time.Millisecond {
		t.Fatalf("y's writes took %v: want the hold of %v, x being expected", d, hold)
	}
	if n := e.expired.Load(); n != 1 {
		t.Fatalf("%d holds ran out, want 1", n)
	}
	timedSets(t, x, xk(7))
	timedSets(t, x, xk(8))
	if !e.waiting() {
		t.Fatal("x is not expected after two quick writes")
	}
	if d := timedSets(t, y, yk(5)...); d >= hold/2 {
		t.Fatalf("y's writes took %v just after a hold ran out: want no hold", d)
	}

	keys := []string{replicaKey("y2", 1)}
	for i := range 8 {
		keys = append(keys, xk(i+1))
	}
	for i := range 5 {
		if i != 1 {
			keys = append(keys, yk(i+1)...)
		}
	}
	for _, k := range keys {
		if _, ok := log.arrived(k); !ok {
			t.Errorf("no replica has a copy of %s", k)
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

// TestHoldPause: after a hold runs out, writers pause for coolHolds holds'
// time, twice as long each time one runs out again within coolHolds
// holds, up to maxCool, and coolHolds holds after the last pause began
// reset it.
func TestHoldPause(t *testing.T) {
	const hold = time.Millisecond
	e := newExpected(hold, func() {})
	expire := func() time.Duration {
		e.add()
		e.forget()
		return e.cool
	}
	if c := expire(); c != coolHolds*hold {
		t.Fatalf("first pause %v, want %v", c, coolHolds*hold)
	}
	if calm := time.Duration(e.calm.Load()); calm < time.Since(e.start)+coolHolds*hold/2 {
		t.Fatalf("writers may hold again %v after start, now is %v: the pause is not in force", calm, time.Since(e.start))
	}
	e.holds.Add(coolHolds - 1)
	if c := expire(); c != 2*coolHolds*hold {
		t.Fatalf("pause after %d holds %v, want %v", coolHolds-1, c, 2*coolHolds*hold)
	}
	for range 10 {
		expire()
	}
	if e.cool != maxCool {
		t.Fatalf("pause after many expiries %v, want %v", e.cool, maxCool)
	}
	e.holds.Add(coolHolds)
	if c := expire(); c != coolHolds*hold {
		t.Fatalf("pause after %d holds %v, want %v again", coolHolds, c, coolHolds*hold)
	}
	if n := e.expired.Load(); n != 13 {
		t.Fatalf("%d holds ran out, want 13", n)
	}
}
