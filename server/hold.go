package server

import (
	"sync"
	"sync/atomic"
	"time"
)

// Holding copies for the clients about to write again: group commit.
//
// With one request in flight per client, what a sync-replicated write costs
// the cluster is mostly wake-ups. Each write of copies wakes its replica,
// whose acknowledgement wakes this node's peer reader. A stream
// connection's writer that sent what it had as soon as the event loops went
// idle would carry the copies of the few writes that arrived first, and
// those arriving a few microseconds later would pay for wake-ups of their
// own: clients answered together come back together. So the writer holds
// its copies while clients this node has just answered a replicated write
// are expected to send again, for at most Config.CopyHold after the first
// copy it holds. The hold ends as soon as the last of those clients has
// sent something, or left. Databases do the same with their group commit
// (PostgreSQL's commit_delay, bounded there by a count of other
// transactions in progress; here, by the clients known to be on their way).
//
// Only a client that came back within half of CopyHold the last time is
// expected, so a client that thinks between requests is not waited for,
// and one whose return varies a little still fits in the hold. If a hold
// runs out while clients are still expected, they did not come back as
// they used to: every expectation then outstanding is forgotten, and no
// writer holds for a while, coolHolds holds' time at first, twice as long
// each time a hold runs out again within coolHolds holds, up to maxCool. A
// client that stopped costs one hold. Clients whose returns vary widely
// (some fast, some after a pause: a client that thinks for tens of
// microseconds, whose sleep the runtime may stretch to a millisecond) cost
// one now and then, rather than one a wave; holding gathers the clients
// into waves, and waves of such clients would wait for their slowest. And a
// hold that runs out lasts longer than CopyHold on an otherwise idle node:
// the runtime's poller sleeps in whole milliseconds.
//
// And a writer holds only while copies wait for at least two replicas. A
// hold gathers the clients into one wave, so this node, with every client
// waiting for the same acknowledgements, goes to sleep once more per wave;
// that costs about what a replica's wake-up saves, so holding pays only
// when it saves the wake-ups of several. Measured with 16 clients at one
// request in flight (BENCHMARKS.md, "Holding copies"): with one replica
// holding cost 13% of the throughput and 7% more CPU per write; with two or
// more it saved 7-13% of the CPU and gained throughput.
//
// Event loops (loop_linux.go) keep the expectations, since only their
// connections are answered by resume, whose turnaround this measures; with
// connections on goroutines nothing is expected and nothing held.

// After a hold runs out no writer holds for coolHolds holds' time, or
// twice the last such pause if fewer than coolHolds holds came between,
// up to maxCool.
const (
	coolHolds = 64
	maxCool   = time.Second
)

// expected counts the clients this node expects to send again soon.
type expected struct {
	hold  time.Duration // Config.CopyHold
	start time.Time
	// calm is when writers may hold again after a hold ran out, after
	// start; cool is the pause then begun, and cooledAt the holds counted
	// when it began (see pause).
	calm     atomic.Int64
	mu       sync.Mutex // guards cool and cooledAt
	cool     time.Duration
	cooledAt uint64
	// state is a generation in its high 32 bits and the clients expected
	// in its low 32; forget starts a new generation with none, and the
	// arrivals of clients expected in an older one do not count.
	state atomic.Uint64
	// holders counts the writers in hold, which wake wakes; streams
	// counts the stream connections with copies not yet written.
	holders atomic.Int32
	streams atomic.Int32
	wake    func()
	// holds counts the writes of copies that were held, and expired the
	// holds that ran out with clients still expected (Progress).
	holds, expired atomic.Uint64
}

func newExpected(hold time.Duration, wake func()) *expected {
	return &expected{hold: hold, start: time.Now(), wake: wake}
}

// quick reports whether a client that came back after turnaround is
// expected back the next time.
func (e *expected) quick(turnaround time.Duration) bool { return turnaround < e.hold/2 }

// add expects one more client and returns the generation its arrival
// counts in.
func (e *expected) add() (gen uint32) {
	return uint32(e.state.Add(1) >> 32)
}

// arrived counts the arrival of a client expected in generation gen, and
// wakes the holding writers if it was the last one expected.
func (e *expected) arrived(gen uint32) {
	for {
		s := e.state.Load()
		if uint32(s>>32) != gen {
			return // forgotten meanwhile
		}
		if e.state.CompareAndSwap(s, s-1) {
			if uint32(s) == 1 && e.holders.Load() > 0 {
				e.wake()
			}
			return
		}
	}
}

// pause stops the holds for a while after one ran out.
func (e *expected) pause() {
	e.mu.Lock()
	defer e.mu.Unlock()
	holds := e.holds.Load()
	if e.cool == 0 || holds-e.cooledAt >= coolHolds {
		e.cool = coolHolds * e.hold
	} else {
		e.cool = min(2*e.cool, maxCool)
	}
	e.cooledAt = holds
	e.calm.Store(int64(time.Since(e.start) + e.cool))
}

// waiting reports whether any client is expected.
func (e *expected) waiting() bool { return uint32(e.state.Load()) > 0 }

// forget drops every expectation outstanding, and wakes the writers that
// hold for them: a hold ran out. Writers pause (see pause).
func (e *expected) forget() {
	for {
		s := e.state.Load()
		if uint32(s) == 0 {
			return
		}
		if e.state.CompareAndSwap(s, (s>>32+1)<<32) {
			e.pause()
			e.expired.Add(1)
			if e.holders.Load() > 0 {
				e.wake()
			}
			return
		}
	}
}

// holdCopies holds the writer's copies for as long as hold says, and
// counts the hold.
func (pc *peerConn) holdCopies() {
	if !pc.hold() {
		return
	}
	for pc.hold() {
	}
	pc.expected.holds.Add(1)
}

// hold waits, on a stream connection, while clients are expected, copies
// wait for another replica too, no pause is in force (see pause), and its
// oldest unwritten copy is younger than the hold: until the next kick, the
// last expected arrival, or the end of the hold. It reports whether it
// waited, so that the writer looks again.
func (pc *peerConn) hold() bool {
	e := pc.expected
	if e == nil || !e.waiting() || e.streams.Load() < 2 || time.Since(e.start) < time.Duration(e.calm.Load()) {
		return false
	}
	pc.mu.Lock()
	left := e.hold - (time.Since(pc.start) - pc.outAt)
	copies := pc.outStamped && pc.err == nil
	pc.mu.Unlock()
	if !copies {
		return false
	}
	if left <= 0 {
		e.forget() // the clients expected did not come back within the hold
		return false
	}
	// holding, then waiting again: an arrival that ends the hold either
	// comes before this look or sees holding and kicks (peers.wakeHolders).
	pc.holding.Store(true)
	e.holders.Add(1)
	defer func() {
		e.holders.Add(-1)
		pc.holding.Store(false)
	}()
	if !e.waiting() {
		return true
	}
	if pc.holdTimer == nil {
		pc.holdTimer = time.NewTimer(left)
	} else {
		pc.holdTimer.Reset(left)
	}
	select {
	case <-pc.wake:
	case <-pc.holdTimer.C:
	}
	pc.holdTimer.Stop()
	return true
}

// wakeHolders kicks the stream connections whose writers hold copies.
func (p *peers) wakeHolders() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, slots := range p.conns {
		if pc := slots[streamSlot]; pc != nil && pc.holding.Load() {
			pc.kick()
		}
	}
	for _, pc := range p.retired {
		if pc.holding.Load() {
			pc.kick()
		}
	}
}
