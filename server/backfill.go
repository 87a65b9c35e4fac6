package server

import (
	"context"
	"time"

	"vbcache/protocol"
	"vbcache/vbucket"
)

const (
	// backfillRetry is how soon an unfinished backfill is tried again; the
	// delay doubles while tries fail, up to maxBackfillRetry, so that a
	// peer that cannot be reached costs a scan of the store only now and
	// then until the cluster fails it over.
	backfillRetry    = 200 * time.Millisecond
	maxBackfillRetry = 5 * time.Second
	// backfillWindow bounds the backfill bytes queued for peers and not
	// yet acknowledged: beyond it the backfill waits for the receivers to
	// catch up. Copies wait in this node's memory until they are written,
	// so without a bound a rebalance would hold a copy of everything it
	// moves at once.
	backfillWindow = 4 << 20
)

// run keeps the streams in step with the map until ctx ends: for each new
// map it forgets streams the map no longer asks for, drops the copies of
// vbuckets this node has just left the chain of, backfills new streams and
// reports ready once all are backfilled. Streams lost starts over are
// backfilled again under the same map.
func (r *replicator) run(ctx context.Context, cl Cluster) {
	var prev *routes
	var doneRev int64       // the rev whose streams are all backfilled
	var retry time.Duration // while a backfill is unfinished: the wait before the next try
	for ctx.Err() == nil {
		after, wait := doneRev, backfillRetry
		if retry > 0 {
			after, wait = prev.m.Rev, retry // a newer map is tried at once
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		cl.WaitMap(wctx, after)
		cancel()
		rt := r.srv.router.get()
		redo := r.redo.Swap(false)
		if rt == nil || rt.m.Rev == doneRev && !redo {
			continue
		}
		if prev == nil || prev.m != rt.m {
			// Also the first map seen: peer connections may have been
			// opened under an older one before this goroutine ran.
			if prev != nil {
				r.dropLeft(prev, rt)
			}
			r.srv.peers.retain(rt.kvAddrs())
			retry = 0
		}
		prev = rt
		if !r.backfill(ctx, rt) {
			// Not done, even if this rev was before streams were lost.
			doneRev, retry = 0, min(max(2*retry, backfillRetry), maxBackfillRetry)
			continue
		}
		doneRev, retry = rt.m.Rev, 0
		if rep, ok := cl.(readyReporter); ok {
			rep.ReportReady(rt.m.Rev)
		}
		r.srv.log.Debug("streams backfilled", "rev", rt.m.Rev)
	}
}

// inChain reports whether server i holds vb in m, in its row or its
// forward row.
func inChain(m *vbucket.Map, vb, i int) bool {
	if i < 0 {
		return false
	}
	for _, s := range m.VBuckets[vb] {
		if s == i {
			return true
		}
	}
	if len(m.Forward) > 0 {
		for _, s := range m.Forward[vb] {
			if s == i {
				return true
			}
		}
	}
	return false
}

// dropLeft deletes this node's copies of the vbuckets it held in prev and
// no longer holds in rt, so moved data does not linger.
func (r *replicator) dropLeft(prev, rt *routes) {
	drop := make([]bool, rt.n)
	any := false
	for vb := range rt.n {
		if inChain(prev.m, vb, prev.self) && !inChain(rt.m, vb, rt.self) {
			drop[vb], any = true, true
		}
	}
	if !any {
		return
	}
	n := rt.n
	removed := r.srv.cfg.Store.DeleteWhere(func(k []byte) bool { return drop[vbucket.VBucket(k, n)] })
	r.srv.log.Debug("dropped copies of vbuckets that moved away", "rev", rt.m.Rev, "items", removed)
}

// streams counts the streams rt asks for and how many of them are
// backfilled.
func (r *replicator) streams(rt *routes) (streams, backfilled int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for vb, ts := range rt.targets {
		for _, t := range ts {
			streams++
			if r.backfilled[streamKey{uint16(vb), rt.m.Servers[t].Name}] {
				backfilled++
			}
		}
	}
	return streams, backfilled
}

// backfill sends every stream of rt that is not yet backfilled the items
// its vbucket holds, and reports whether all streams are backfilled.
func (r *replicator) backfill(ctx context.Context, rt *routes) bool {
	want := map[streamKey]int{} // stream -> server index
	for vb, ts := range rt.targets {
		for _, t := range ts {
			want[streamKey{uint16(vb), rt.m.Servers[t].Name}] = t
		}
	}
	r.mu.Lock()
	for k := range r.started {
		if _, ok := want[k]; !ok {
			r.forget(k)
			delete(r.backfilled, k)
		}
	}
	todo := map[uint16][]streamKey{}
	for k := range want {
		if !r.backfilled[k] {
			todo[k.vb] = append(todo[k.vb], k)
		}
	}
	r.mu.Unlock()
	if len(todo) == 0 {
		return true
	}

	// One pass over the store finds the keys of every vbucket to backfill.
	n := rt.n
	keys := map[uint16][][]byte{}
	r.srv.cfg.Store.Keys(func(k []byte) bool {
		_, ok := todo[vbucket.VBucket(k, n)]
		return ok
	}, func(k []byte) bool {
		vb := vbucket.VBucket(k, n)
		keys[vb] = append(keys[vb], k)
		return ctx.Err() == nil
	})

	start := time.Now()
	items, bytes := 0, 0
	calls := map[streamKey][]*call{}
	var frame []byte
	w := newWaiter()
	// Every stream starts before any is backfilled, so that the receivers
	// get their DEL_VBUCKETs back to back and empty all those vbuckets in
	// one pass over their stores (see conn.dropVBucket). Writes made in
	// between are streamed in order after the start, and the backfilled
	// copies, read later, are as new as they are.
	for vb, streams := range todo {
		mu := &r.vbLocks[vb]
		mu.Lock()
		for _, k := range streams {
			r.start(vb, k.name, rt.m.Servers[want[k]].KV)
		}
		mu.Unlock()
	}
	window := 0 // bytes queued since the receivers last caught up
	for vb, streams := range todo {
		if window >= backfillWindow {
			w.waitAll()
			window = 0
		}
		mu := &r.vbLocks[vb]
		mu.Lock()
		vbItems, vbBytes := 0, 0
		for _, key := range keys[vb] {
			frame = r.appendCopy(frame[:0], key, vb)
			if protocol.Opcode(frame[1]) != protocol.OpSetWithMeta {
				continue // gone since the keys were listed
			}
			vbItems++
			vbBytes += len(frame)
			for _, k := range streams {
				calls[k] = append(calls[k], r.srv.peers.send(rt.m.Servers[want[k]].KV, frame, protocol.OpSetWithMeta, w))
			}
		}
		mu.Unlock()
		window += vbBytes * len(streams)
		// Counted as each vbucket is queued, so progress shows during a
		// long backfill.
		items, bytes = items+vbItems, bytes+vbBytes
		r.srv.stats.backfillItems.Add(uint64(vbItems))
		r.srv.stats.backfillBytes.Add(uint64(vbBytes))
		if ctx.Err() != nil {
			return false
		}
	}

	done := true
	w.waitAll() // one wake-up for the whole backfill, unless it is slow
	for _, streams := range todo {
		for _, k := range streams {
			ok := true
			for _, cl := range calls[k] {
				if resp, err := w.wait(cl); err != nil || respStatus(resp) != protocol.StatusOK {
					ok = false
					break
				}
			}
			r.mu.Lock()
			if ok && r.started[k] {
				r.backfilled[k] = true
			} else {
				// Start again with a reset next time.
				r.forget(k)
				done = false
			}
			r.mu.Unlock()
		}
	}
	r.srv.log.Info("backfill finished", "rev", rt.m.Rev, "streams", len(want), "items", items, "bytes", bytes,
		"took", time.Since(start).Round(time.Millisecond), "complete", done)
	return done
}
