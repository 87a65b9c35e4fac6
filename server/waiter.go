package server

import (
	"sync/atomic"
	"time"
)

// waiter is what a goroutine blocks on while it waits for its calls to
// peers: a client connection's, or a backfill's. One waiter serves all of
// its owner's calls, so a call costs no channel of its own.
//
// A completing call wakes the waiter only if the waiter is waiting for that
// call, or for all of them and it was the last. So a batch whose copies are
// acknowledged by two replicas, or in several reads, wakes its connection
// once, when its output can go; every wake-up of a parked goroutine costs
// the scheduler (and in a VM the kernel) several microseconds.
type waiter struct {
	ch      chan struct{}        // room for one signal
	pending atomic.Int32         // calls made and not yet complete
	on      atomic.Pointer[call] // the call waited for; allCalls or resumeAll: every call
	timer   *time.Timer          // bounds one wait; stopped between waits
	// resume is called, by the goroutine that completes the last call,
	// when w.on is resumeAll: a parked connection of an event loop then
	// finishes its batch on that goroutine (see eventLoop.park).
	resume func()
}

var (
	// allCalls is waiter.on while the waiter waits for every call.
	allCalls = new(call)
	// resumeAll is waiter.on while no one waits: the last call to complete
	// calls resume instead of waking anyone.
	resumeAll = new(call)
)

func newWaiter() *waiter {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &waiter{ch: make(chan struct{}, 1), timer: t}
}

// completed counts cl, one of w's calls, done, and wakes w if it waits for
// it. cl.done is set before, so that a waiter that starts waiting for cl
// afterwards does not block.
func (w *waiter) completed(cl *call) {
	left := w.pending.Add(-1)
	switch on := w.on.Load(); {
	case on == cl || on == allCalls && left == 0:
		select {
		case w.ch <- struct{}{}:
		default: // a signal is already pending
		}
	case on == resumeAll && left == 0:
		w.resumeOnce()
	}
}

// parkAll arranges for resume to be called once every call made so far
// is complete: at once, on this goroutine, if they already are.
func (w *waiter) parkAll() {
	w.on.Store(resumeAll)
	if w.pending.Load() == 0 {
		w.resumeOnce()
	}
}

// resumeOnce calls resume unless another goroutine has already: both
// the last completion and parkAll may see every call complete.
func (w *waiter) resumeOnce() {
	if w.on.CompareAndSwap(resumeAll, nil) {
		w.resume()
	}
}

// wait returns a call's response, or an error if it failed or took longer
// than forwardTimeout, or has already timed out (see call.expired).
func (w *waiter) wait(cl *call) ([]byte, error) {
	if !cl.done.Load() {
		if cl.expired {
			return nil, errForwardTimeout
		}
		w.on.Store(cl)
		if !w.block(cl.done.Load, forwardTimeout) {
			return nil, errForwardTimeout
		}
	}
	return cl.resp, cl.err
}

// waitAll waits until every call made so far is complete, or for
// forwardTimeout, and reports whether they all completed.
func (w *waiter) waitAll() bool { return w.waitAllFor(forwardTimeout) }

// waitAllFor is waitAll waiting at most d.
func (w *waiter) waitAllFor(d time.Duration) bool {
	if w.pending.Load() == 0 {
		return true
	}
	w.on.Store(allCalls)
	return w.block(func() bool { return w.pending.Load() == 0 }, d)
}

// block waits for signals until done reports true, for at most d; w.on
// says what the signals are for.
func (w *waiter) block(done func() bool, d time.Duration) bool {
	defer w.on.Store(nil)
	if done() { // completed between the caller's check and w.on's store
		return true
	}
	w.timer.Reset(d)
	defer w.timer.Stop()
	for !done() {
		select {
		case <-w.ch:
		case <-w.timer.C:
			return done()
		}
	}
	return true
}
