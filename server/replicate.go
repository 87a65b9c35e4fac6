package server

import (
	"encoding/binary"
	"slices"
	"sync"
	"sync/atomic"

	"vbcache/protocol"
	"vbcache/store"
	"vbcache/vbucket"
)

// Replication and vbucket moves share one mechanism: a stream from the
// active copy of a vbucket to every other server in its chain (its
// replicas, and during a rebalance the servers of its forward row).
//
//   - A stream starts with DEL_VBUCKET, which empties the receiver's copy,
//     then carries every mutation as SET_WITH_META or DEL_WITH_META (value,
//     flags, data type, CAS, absolute expiration), and, in the background,
//     a backfill of the items the vbucket held when the stream started.
//     Copies travel in their quiet forms, SETQ_WITH_META and
//     DELQ_WITH_META: the receiver answers only those it refuses, and a
//     NOOP closing each write to it acknowledges the rest (peer.go).
//   - Order: every stream message goes on the peer's stream connection
//     (peer.go), and the write path holds the vbucket's lock from the
//     store operation until its copy is queued; the backfill takes the
//     same lock while it reads and queues each batch. So the
//     receiver applies a vbucket's copies in the order the active made
//     them, and a backfilled item never overtakes a newer write.
//   - Receivers apply copies only if newer by CAS (store.SetWithMeta), and
//     refuse them with NOT_MY_VBUCKET if they hold the vbucket active
//     themselves: then the sender's map is stale, and the client's request
//     is routed again to the new owner rather than acknowledged.
//   - Sync replication (the default) answers the client once every stream
//     acknowledged the copy. Async replication answers at once, unless a
//     receiver has fallen peerBacklog behind: then it waits as sync does.
//     A receiver that cannot be reached (it died) does not fail the write:
//     the active holds it, the failure is counted, and the cluster will
//     fail that node over and rebuild the copy.
//   - Once every stream of the current map is backfilled the node reports
//     ready for that map's rev, which is what the coordinator waits for
//     before it hands vbuckets to their new owners.

// Cluster methods the replicator needs beyond routing.
type readyReporter interface {
	ReportReady(rev int64)
}

// streamKey names a stream: a vbucket and the receiving server.
type streamKey struct {
	vb   uint16
	name string
}

// replicator is a cluster node's stream state.
type replicator struct {
	srv     *Server
	sync    bool
	vbLocks []sync.Mutex // one per vbucket: orders store operations and their copies

	mu         sync.Mutex // guards started and backfilled
	started    map[streamKey]bool
	backfilled map[streamKey]bool
	kick       chan struct{}

	// vbStarted[vb] caches the names of started streams of vb, so that a
	// write need not take mu to find its streams started; guarded by
	// vbLocks[vb]. It is valid while vbStartedGen[vb] equals gen, which
	// every deletion from started bumps.
	vbStarted    [][]string
	vbStartedGen []uint64
	gen          atomic.Uint64

	// redo asks run to backfill again, for streams lost forgot.
	redo         atomic.Bool
	lostWarnings sometimes
}

func newReplicator(s *Server, n int, syncRepl bool) *replicator {
	return &replicator{
		srv: s, sync: syncRepl, vbLocks: make([]sync.Mutex, n),
		started: make(map[streamKey]bool), backfilled: make(map[streamKey]bool),
		kick:      make(chan struct{}, 1),
		vbStarted: make([][]string, n), vbStartedGen: make([]uint64, n),
	}
}

// forget deletes k from started, so that the stream starts again with a
// reset. r.mu is held.
func (r *replicator) forget(k streamKey) {
	delete(r.started, k)
	r.gen.Add(1)
}

// lost starts every stream to the node at addr over: a connection to it
// failed with stream messages unacknowledged, which it may not have
// applied. The next write to each vbucket resets the stream, and run
// backfills it again, so the copies the node missed reach it, even those
// of writes acknowledged meanwhile.
func (r *replicator) lost(addr string) {
	rt := r.srv.router.get()
	if rt == nil {
		return
	}
	names := map[string]bool{}
	for _, s := range rt.m.Servers {
		if s.KV == addr {
			names[s.Name] = true
		}
	}
	r.mu.Lock()
	n := 0
	for k := range r.started {
		if names[k.name] {
			r.forget(k)
			delete(r.backfilled, k)
			n++
		}
	}
	r.mu.Unlock()
	if n == 0 {
		return
	}
	r.redo.Store(true)
	if ok, suppressed := r.lostWarnings.allow(warnEvery); ok {
		r.srv.log.Warn("streams to a peer start over: a connection to it failed with copies unacknowledged",
			"peer", addr, "streams", n, "restarts_since_last_warning", suppressed)
	}
}

// mutates reports whether op changes an item, so that its vbucket's
// streams must carry the result. TOUCH and GAT change the expiration only
// and keep the CAS; receivers apply such a copy because its expiration
// differs (store.SetWithMeta).
func mutates(op protocol.Opcode) bool {
	switch op.Loud() {
	case protocol.OpSet, protocol.OpAdd, protocol.OpReplace, protocol.OpDelete,
		protocol.OpIncrement, protocol.OpDecrement, protocol.OpAppend, protocol.OpPrepend,
		protocol.OpTouch, protocol.OpGAT, protocol.OpGATK:
		return true
	}
	return false
}

// replicate serves the mutation req locally and streams its result to the
// vbucket's other servers. With sync replication the client's response
// waits in a slot for their acknowledgements.
func (c *conn) replicate(req *protocol.Request, rt *routes, vb uint16) {
	r := c.srv.repl
	start := len(c.wbuf)
	first := len(c.calls)
	mu := &r.vbLocks[vb]
	mu.Lock()
	c.stored.CAS = 0
	c.execute(req)
	if succeeded(c.wbuf[start:]) {
		if c.stored.CAS != 0 && c.stored.Exp == 0 {
			// The item is the request's: no need to read it back.
			c.scratch = appendSetCopy(c.scratch[:0], req.Key, req.Value, c.stored, vb)
		} else {
			c.scratch = r.appendCopy(c.scratch[:0], req.Key, vb)
		}
		op := protocol.Opcode(c.scratch[1])
		for _, t := range rt.targets[vb] {
			addr := rt.m.Servers[t].KV
			r.start(vb, rt.m.Servers[t].Name, addr)
			cl := c.send(addr, c.scratch, op)
			if r.sync || cl.behind {
				c.calls = append(c.calls, cl)
			}
		}
	}
	mu.Unlock()
	if len(c.calls) == first {
		return
	}
	local := c.hold(c.wbuf[start:])
	c.wbuf = c.wbuf[:start]
	c.slots = append(c.slots, slot{
		at: start, frame: c.holdRequest(req, vb), vb: vb, rev: rt.m.Rev,
		repl: c.calls[first:len(c.calls):len(c.calls)], local: local,
	})
}

// succeeded reports whether resp, the response a request appended (empty
// for a quiet success), is a success.
func succeeded(resp []byte) bool {
	return len(resp) == 0 || respStatus(resp) == protocol.StatusOK
}

// holdRequest returns a copy of req as a frame with vbucket vb, held
// until the batch is flushed (see hold).
func (c *conn) holdRequest(req *protocol.Request, vb uint16) []byte {
	at := len(c.held)
	c.held = protocol.AppendFrame(c.held, &protocol.Frame{
		Magic: protocol.MagicRequest, Opcode: req.Opcode, DataType: req.DataType, VBucket: vb,
		Opaque: req.Opaque, CAS: req.CAS, Extras: req.Extras, Key: req.Key, Value: req.Value,
	})
	return c.held[at:len(c.held):len(c.held)]
}

// hold returns a copy of b that stays valid until the batch is flushed.
// The copies share one buffer per connection: when it grows, the copies
// made before stay in the old array, which lives as long as they do.
func (c *conn) hold(b []byte) []byte {
	at := len(c.held)
	c.held = append(c.held, b...)
	return c.held[at:len(c.held):len(c.held)]
}

// copyExtrasLen is the extras of a copy: flags, expiration, seqno (unused),
// CAS.
const copyExtrasLen = 24

// appendCopy appends to dst the stream message that brings a receiver's
// copy of key up to this node's: SET_WITH_META with the item, or
// DEL_WITH_META if it is gone. The caller holds the vbucket's lock.
func (r *replicator) appendCopy(dst, key []byte, vb uint16) []byte {
	st := r.srv.cfg.Store
	// The frame is header, extras, key, value; the value goes in place,
	// then the rest around it.
	at := len(dst)
	body := at + protocol.HeaderLen + copyExtrasLen + len(key)
	dst = slices.Grow(dst, body-at)[:body]
	dst, m, ok := st.GetWithMeta(key, dst)
	op := protocol.OpSetWithMeta
	if !ok {
		op, m = protocol.OpDelWithMeta, store.Meta{CAS: st.NextCAS()}
	}
	putCopyHeader(dst[at:], op, key, m, vb)
	return dst
}

// appendSetCopy appends to dst the SET_WITH_META of key = value with meta
// m: the item a SET, ADD or REPLACE just stored.
func appendSetCopy(dst, key, value []byte, m store.Meta, vb uint16) []byte {
	at := len(dst)
	n := protocol.HeaderLen + copyExtrasLen + len(key) + len(value)
	dst = slices.Grow(dst, n)[:at+n]
	copy(dst[at+protocol.HeaderLen+copyExtrasLen+len(key):], value)
	putCopyHeader(dst[at:], protocol.OpSetWithMeta, key, m, vb)
	return dst
}

// putCopyHeader fills in the header, extras and key of the copy frame f,
// whose value is in place.
func putCopyHeader(f []byte, op protocol.Opcode, key []byte, m store.Meta, vb uint16) {
	extras := f[protocol.HeaderLen : protocol.HeaderLen+copyExtrasLen]
	clear(extras)
	if op == protocol.OpSetWithMeta {
		binary.BigEndian.PutUint32(extras[0:4], m.Flags)
		binary.BigEndian.PutUint32(extras[4:8], uint32(m.Exp))
	}
	binary.BigEndian.PutUint64(extras[16:24], m.CAS)
	copy(f[protocol.HeaderLen+copyExtrasLen:], key)
	protocol.AppendHeader(f[:0], protocol.MagicRequest, op, len(key), copyExtrasLen,
		m.DataType, vb, len(f)-protocol.HeaderLen, 0, 0)
}

// start begins the stream of vb to the named server, if it has not begun:
// it sends DEL_VBUCKET, so the receiver's copy starts empty, and schedules
// the backfill. The caller holds the vbucket's lock.
func (r *replicator) start(vb uint16, name, addr string) {
	if r.vbStartedGen[vb] == r.gen.Load() && slices.Contains(r.vbStarted[vb], name) {
		return
	}
	k := streamKey{vb, name}
	r.mu.Lock()
	defer r.mu.Unlock()
	if gen := r.gen.Load(); r.vbStartedGen[vb] != gen {
		r.vbStarted[vb], r.vbStartedGen[vb] = r.vbStarted[vb][:0], gen
	}
	r.vbStarted[vb] = append(r.vbStarted[vb], name)
	if r.started[k] {
		return
	}
	r.started[k] = true
	r.srv.peers.send(addr, protocol.AppendFrame(nil, &protocol.Frame{
		Magic: protocol.MagicRequest, Opcode: protocol.OpDelVBucket, VBucket: vb,
	}), protocol.OpDelVBucket, nil)
}

// applyCopy serves the stream messages a peer sends: SET_WITH_META,
// DEL_WITH_META and DEL_VBUCKET. A node that holds the vbucket active
// refuses them.
func (c *conn) applyCopy(req *protocol.Request) {
	rt := c.srv.router.get()
	if !c.peer || rt == nil || rt.single {
		c.fail(req, protocol.StatusUnknownCommand)
		return
	}
	if rt.local(req.VBucket) {
		c.fail(req, protocol.StatusNotMyVBucket)
		return
	}
	st := c.srv.cfg.Store
	switch op := req.Opcode.Loud(); op {
	case protocol.OpDelVBucket:
		c.dropVBucket(req.VBucket, rt.n)
	case protocol.OpSetWithMeta, protocol.OpDelWithMeta:
		if len(req.Extras) != 24 || len(req.Key) == 0 {
			c.fail(req, protocol.StatusInvalidArgs)
			return
		}
		if int(req.VBucket) < len(c.drops) && c.drops[req.VBucket] {
			c.dropVBuckets() // the copy goes into the emptied vbucket
		}
		cas := binary.BigEndian.Uint64(req.Extras[16:24])
		if op == protocol.OpDelWithMeta {
			st.DeleteWithMeta(req.Key, cas)
			break
		}
		m := store.Meta{
			Flags: binary.BigEndian.Uint32(req.Extras[0:4]), Exp: int64(binary.BigEndian.Uint32(req.Extras[4:8])),
			DataType: req.DataType, CAS: cas,
		}
		if _, err := st.SetWithMeta(req.Key, req.Value, m); err != nil {
			c.fail(req, statusOf(err))
			return
		}
	}
	c.ok(req, 0)
}

// dropVBucket empties this node's copy of vb before the next copy of vb
// from this connection is applied, or at the end of the batch. A stream
// start sends DEL_VBUCKET for hundreds of vbuckets back to back, and each
// emptying is a scan of the whole store with every shard locked in turn:
// marking them here lets one scan empty them all.
func (c *conn) dropVBucket(vb uint16, n int) {
	if len(c.drops) != n {
		c.dropVBuckets()
		c.drops = make([]bool, n)
	}
	if !c.drops[vb] {
		c.drops[vb] = true
		c.ndrops++
	}
}

// dropVBuckets empties the vbuckets dropVBucket marked, in one scan.
func (c *conn) dropVBuckets() {
	if c.ndrops == 0 {
		return
	}
	drops, n := c.drops, len(c.drops)
	c.srv.cfg.Store.DeleteWhere(func(k []byte) bool { return drops[vbucket.VBucket(k, n)] })
	clear(drops)
	c.ndrops = 0
}
