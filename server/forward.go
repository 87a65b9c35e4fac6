package server

import (
	"context"
	"encoding/binary"
	"errors"
	"time"

	"vbcache/protocol"
	"vbcache/vbucket"
)

// Routing in cluster mode. A keyed request for a vbucket this node holds
// active is served here. Otherwise a vbucket-aware connection (it sent
// HELLO, or a request with a non-zero vbucket) gets NOT_MY_VBUCKET with the
// config, and a legacy one has its request forwarded to the owner.
//
// Forwarding keeps the client's view identical to one memcached's: each
// forwarded request leaves a slot at its place in the output; the batch's
// responses are written in request order once every slot is filled (see
// assemble). Quiet requests are forwarded in their loud form and the
// answers the quiet form would not send are dropped.

var errForwardTimeout = errors.New("server: forwarded request timed out")

const (
	// forwardTimeout bounds the wait for one forwarded response.
	forwardTimeout = 5 * time.Second
	// forwardTries bounds how often a request the receiver disowned is
	// routed again, each after waiting up to mapWait for a newer map.
	forwardTries = 4
	mapWait      = 500 * time.Millisecond
)

// slot is a response this connection owes its client that another node
// produces. It goes out at wbuf[at], after the responses before it.
type slot struct {
	at    int
	frame []byte // the client's request, copied, with the vbucket it was routed by
	vb    uint16
	rev   int64   // rev of the map the request was last routed by
	call  *call   // the forwarded request
	fan   []*call // FLUSH sent to every other node
	repl  []*call // copies of a local write sent to its vbucket's streams
	local []byte  // the local write's response, sent once repl is acknowledged
}

// route serves req elsewhere if this node does not hold its vbucket, and
// reports whether it did so. Otherwise the caller serves it locally; rt
// and vb are the routes and vbucket it was routed by.
func (c *conn) route(req *protocol.Request) (done bool, rt *routes, vb uint16) {
	rt = c.srv.router.get()
	if rt == nil {
		c.fail(req, protocol.StatusTempFailure) // no map yet
		return true, nil, 0
	}
	if req.VBucket != 0 {
		c.aware = true
	}
	vb = req.VBucket
	if !c.aware {
		vb = vbucket.VBucket(req.Key, rt.n)
	}
	if rt.local(vb) {
		return false, rt, vb
	}
	if c.aware {
		c.stats[cNotMyVBucket].Add(1)
		c.wbuf = protocol.AppendFrame(c.wbuf, &protocol.Frame{
			Magic: protocol.MagicResponse, Opcode: req.Opcode, DataType: protocol.DataTypeJSON,
			VBucket: uint16(protocol.StatusNotMyVBucket), Opaque: req.Opaque, Value: rt.config,
		})
		return true, rt, vb
	}
	owner := rt.owner(vb)
	if owner < 0 {
		c.fail(req, protocol.StatusTempFailure)
		return true, rt, vb
	}
	frame := c.holdRequest(req, vb)
	c.stats[cForwarded].Add(1)
	c.slots = append(c.slots, slot{
		at: len(c.wbuf), frame: frame, vb: vb, rev: rt.m.Rev,
		call: c.send(rt.m.Servers[owner].KV, frame, req.Opcode.Loud()),
	})
	return true, rt, vb
}

// flushCluster serves FLUSH from a client in cluster mode: this node
// flushes at once and every other node is sent the same FLUSH; the client
// is answered once all have.
func (c *conn) flushCluster(req *protocol.Request) {
	rt := c.srv.router.get()
	c.flushLocal(req)
	if rt == nil {
		c.ok(req, 0)
		return
	}
	frame := protocol.AppendFrame(nil, &protocol.Frame{
		Magic: protocol.MagicRequest, Opcode: req.Opcode, Opaque: req.Opaque, Extras: req.Extras,
	})
	s := slot{at: len(c.wbuf), frame: frame}
	for i, srv := range rt.m.Servers {
		if i != rt.self {
			s.fan = append(s.fan, c.srv.peers.send(srv.KV, frame, protocol.OpFlush, c.waiter()))
		}
	}
	c.slots = append(c.slots, s)
}

// waitsForCopies reports whether the batch waits for the copies of its
// writes to be acknowledged (sync replication).
func (c *conn) waitsForCopies() bool {
	for i := range c.slots {
		if len(c.slots[i].repl) > 0 {
			return true
		}
	}
	return false
}

// assemble fills every slot, waiting for the responses, and replaces wbuf
// with the batch's output in request order.
func (c *conn) assemble() {
	if len(c.slots) == 0 {
		return
	}
	// One wake-up when the last response arrives, rather than one per
	// slot whose response is not in yet; and one forwardTimeout for the
	// batch, not one per call (an event loop may have spent it already,
	// see checkParked).
	d := forwardTimeout
	if !c.expire.IsZero() {
		d, c.expire = max(time.Until(c.expire), 0), time.Time{}
	}
	if !c.waiter().waitAllFor(d) {
		c.expireCalls()
	}
	out := c.spare[:0]
	prev := 0
	for i := range c.slots {
		s := &c.slots[i]
		out = append(out, c.wbuf[prev:s.at]...)
		prev = s.at
		at := len(out)
		out = c.resolve(s, out)
		if len(out) == at {
			c.countSilent(protocol.Opcode(s.frame[1]))
		}
	}
	out = append(out, c.wbuf[prev:]...)
	c.spare, c.wbuf = c.wbuf[:0], out
	clear(c.slots)
	c.slots = c.slots[:0]
	// Nothing refers to the batch's held copies and calls any more.
	clear(c.calls)
	c.calls = c.calls[:0]
	if cap(c.held) > keepBuf {
		c.held = nil
	}
	c.held = c.held[:0]
}

// expireCalls marks the batch's calls that are not complete as expired:
// resolve fills their slots without waiting again.
func (c *conn) expireCalls() {
	expire := func(cl *call) {
		if cl != nil && !cl.done.Load() {
			cl.expired = true
		}
	}
	for i := range c.slots {
		s := &c.slots[i]
		expire(s.call)
		for _, cl := range s.fan {
			expire(cl)
		}
		for _, cl := range s.repl {
			expire(cl)
		}
	}
}

// settled reports whether assemble can fill every slot without waiting,
// once every call is complete: no receiver disowned a request or a copy,
// which would have it routed again by a newer map.
func (c *conn) settled() bool {
	for i := range c.slots {
		s := &c.slots[i]
		if s.call != nil && !c.settledCall(s.call) {
			return false
		}
		for _, cl := range s.repl {
			if !c.settledCall(cl) {
				return false
			}
		}
	}
	return true
}

// settledCall reports whether cl is complete and was not disowned. Every
// call should be complete when settled is asked, since the last completion
// resumes the batch; but a CI run once resumed one with a call outstanding
// (its response nil, which crashed respStatus), through a path not found
// yet. Such a batch moves to a goroutine, which waits for each call, and
// the event is logged.
func (c *conn) settledCall(cl *call) bool {
	if !cl.done.Load() {
		if ok, suppressed := c.srv.outstandingWarnings.allow(warnEvery); ok {
			c.srv.log.Error("a parked batch resumed with a call to a peer outstanding; it finishes on a goroutine",
				"peer", c.nc.RemoteAddr(), "since_last_warning", suppressed)
		}
		return false
	}
	return !disowned(cl)
}

// disowned reports whether the complete call cl was answered
// NOT_MY_VBUCKET.
func disowned(cl *call) bool {
	return cl.err == nil && respStatus(cl.resp) == protocol.StatusNotMyVBucket
}

// resolve appends the client's response for slot s to out.
func (c *conn) resolve(s *slot, out []byte) []byte {
	req, _, _ := protocol.Parse(s.frame, protocol.MagicRequest, ^uint32(0))
	switch {
	case s.fan != nil:
		return c.resolveFlush(s, &req, out)
	case s.repl != nil:
		if !c.copiesRefused(s, &req) {
			return append(out, s.local...)
		}
		// A receiver holds the vbucket active: this node's map is stale
		// and the write must be made by the new owner. If no newer map
		// says who that is, the write is not acknowledged: this node
		// may be about to drop its copy.
		rt := c.reroute(s)
		if rt == nil || rt.local(s.vb) {
			return protocol.AppendError(out, req.Opcode, protocol.StatusTempFailure, req.Opaque)
		}
	}
	return c.resolveForward(s, &req, out)
}

// resolveFlush answers a cluster-wide FLUSH once every node has.
func (c *conn) resolveFlush(s *slot, req *protocol.Request, out []byte) []byte {
	for _, cl := range s.fan {
		if resp, err := c.wait(cl); err != nil || respStatus(resp) != protocol.StatusOK {
			c.srv.log.Debug("cluster flush incomplete", "err", err)
			return protocol.AppendError(out, req.Opcode, protocol.StatusTempFailure, req.Opaque)
		}
	}
	if req.Opcode.IsQuiet() {
		return out
	}
	return protocol.AppendHeader(out, protocol.MagicResponse, req.Opcode, 0, 0, 0, 0, 0, req.Opaque, 0)
}

// copiesRefused waits for the acknowledgements of a local write's copies
// and reports whether a receiver refused one as NOT_MY_VBUCKET. Receivers
// that fail or cannot be reached are counted, not waited for again: the
// write stands here and the cluster fails such a node over.
func (c *conn) copiesRefused(s *slot, req *protocol.Request) bool {
	refused := false
	for _, cl := range s.repl {
		resp, err := c.wait(cl)
		switch {
		case errors.Is(err, errForwardTimeout):
			c.warnTimeout("replica copy unacknowledged", req, s)
			c.srv.stats.replErrors.Add(1)
		case err != nil:
			c.srv.stats.replErrors.Add(1)
		case respStatus(resp) == protocol.StatusNotMyVBucket:
			refused = true
		case respStatus(resp) != protocol.StatusOK:
			c.srv.stats.replErrors.Add(1)
		}
	}
	return refused
}

// resolveForward waits for the owner's answer to a forwarded request and
// translates it; a request the receiver disowns is routed again by a newer
// map, at most forwardTries times, never via the receiver's forwarding.
func (c *conn) resolveForward(s *slot, req *protocol.Request, out []byte) []byte {
	for try := 1; ; try++ {
		resp, err := c.wait(s.call)
		if err != nil {
			if errors.Is(err, errForwardTimeout) {
				c.warnTimeout("forwarded request unanswered", req, s)
			} else {
				c.srv.log.Debug("forward failed", "op", req.Opcode, "vb", s.vb, "err", err)
			}
			return protocol.AppendError(out, req.Opcode, protocol.StatusTempFailure, req.Opaque)
		}
		if respStatus(resp) != protocol.StatusNotMyVBucket {
			return translate(out, resp, req)
		}
		if try == forwardTries {
			c.srv.log.Debug("forward: owner keeps disowning", "op", req.Opcode, "vb", s.vb, "rev", s.rev)
			return protocol.AppendError(out, req.Opcode, protocol.StatusTempFailure, req.Opaque)
		}
		rt := c.reroute(s)
		if rt == nil {
			return protocol.AppendError(out, req.Opcode, protocol.StatusTempFailure, req.Opaque)
		}
		if rt.local(s.vb) {
			return c.serveLocal(req, out)
		}
	}
}

// warnTimeout warns that a call for slot s timed out, at most every
// warnEvery for the whole server: under a partition every request
// may time out.
func (c *conn) warnTimeout(msg string, req *protocol.Request, s *slot) {
	if ok, suppressed := c.srv.timeoutWarnings.allow(warnEvery); ok {
		c.srv.log.Warn(msg, "op", req.Opcode, "vb", s.vb, "rev", s.rev, "timeout", forwardTimeout,
			"timeouts_since_last_warning", suppressed)
	}
}

// reroute waits up to mapWait for a map newer than the one s was routed
// by, and forwards s's request to the owner by that map unless it is this
// node. It returns the routes used, or nil if the vbucket has no owner.
func (c *conn) reroute(s *slot) *routes {
	ctx, cancel := context.WithTimeout(context.Background(), mapWait)
	c.srv.cfg.Cluster.WaitMap(ctx, s.rev)
	cancel()
	rt := c.srv.router.get()
	s.rev = rt.m.Rev
	if rt.local(s.vb) {
		return rt
	}
	owner := rt.owner(s.vb)
	if owner < 0 {
		return nil
	}
	op := protocol.Opcode(s.frame[1])
	s.call = c.srv.peers.send(rt.m.Servers[owner].KV, s.frame, op.Loud(), c.waiter())
	return rt
}

// serveLocal serves req here, appending its response to out.
func (c *conn) serveLocal(req *protocol.Request, out []byte) []byte {
	saved := c.wbuf
	c.wbuf = out
	c.execute(req)
	out = c.wbuf
	c.wbuf = saved
	return out
}

// wait waits for one of the connection's calls.
func (c *conn) wait(cl *call) ([]byte, error) { return c.waiter().wait(cl) }

// waiter returns the connection's waiter, made on first use: most
// connections never call a peer.
func (c *conn) waiter() *waiter {
	if c.peerWait == nil {
		c.peerWait = newWaiter()
	}
	return c.peerWait
}

// translate appends the peer's response resp as the answer to the client's
// req: with req's opcode and opaque, or nothing where req's quiet form
// would have sent nothing.
func translate(out, resp []byte, req *protocol.Request) []byte {
	st := respStatus(resp)
	if req.Opcode.IsQuiet() {
		// A quiet read is silent on a miss; a quiet mutation on success.
		switch req.Opcode.Loud() {
		case protocol.OpGet, protocol.OpGetK, protocol.OpGAT, protocol.OpGATK:
			if st == protocol.StatusKeyNotFound {
				return out
			}
		default:
			if st == protocol.StatusOK {
				return out
			}
		}
	}
	at := len(out)
	out = append(out, resp...)
	out[at+1] = byte(req.Opcode)
	binary.BigEndian.PutUint32(out[at+12:], req.Opaque)
	return out
}

// respStatus returns the status of the response frame resp.
func respStatus(resp []byte) protocol.Status {
	return protocol.Status(binary.BigEndian.Uint16(resp[6:8]))
}
