package server

import (
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"vbcache/protocol"
	"vbcache/store"
)

const (
	// initialBuf is the size of a connection's read and write buffers; both
	// grow for large frames and shrink back once those are done.
	initialBuf = 8 << 10
	// flushAt is the output size at which responses are written before the
	// rest of a batch is handled, so a long pipeline of large GETs does not
	// hold them all in memory.
	flushAt = 256 << 10
	// keepBuf is the largest buffer a connection keeps between batches.
	keepBuf = 64 << 10
)

// conn is one client connection. All its fields but stats belong to the
// goroutine serving it: its event loop's, or its own once handed off.
type conn struct {
	srv *Server
	nc  net.Conn

	rbuf []byte // rbuf[r:w] holds bytes read but not yet handled
	r, w int
	// skip counts body bytes of a refused oversized frame still to discard.
	skip uint64
	wbuf []byte

	authed bool
	aware  bool // sent HELLO or a non-zero vbucket: trusts header vbuckets
	// claimsPeer says the connection said HELLO as another node would;
	// peer says it is one: it claims to be, and this node has no users or
	// it then authenticated as Config.PeerAuth's user (see saslAuth). A
	// peer may apply stream messages, its FLUSH is not fanned out and it
	// is exempt from IdleTimeout.
	claimsPeer bool
	peer       bool

	// slots are the responses other nodes owe this batch, in order;
	// spare is the buffer assemble swaps with wbuf.
	slots []slot
	spare []byte
	// kicks are the peer connections this batch queued requests on; they
	// are woken once, when the batch is flushed (see send).
	kicks []*peerConn
	// scratch builds the stream messages of a local write (replicate).
	scratch []byte
	// stored is the meta of the item the last SET, ADD or REPLACE stored
	// with the request's value; a zero CAS if the last write was another.
	// replicate builds the copy from it (see copyOfSet).
	stored store.Meta
	// held and calls hold the slots' request copies, local responses and
	// replica calls until the batch is flushed (see hold).
	held  []byte
	calls []*call
	// drops marks the vbuckets whose DEL_VBUCKET a peer sent in this batch
	// and that are not emptied yet (see dropVBuckets).
	drops  []bool
	ndrops int
	// peerWait is what the connection waits on for its calls to peers; nil
	// until it makes one. slab[:slabUsed] are the calls send made since
	// the slab was last reused (see newCall).
	peerWait *waiter
	slab     []call
	slabUsed int

	// lio is set while an event loop serves the connection (loop_linux.go);
	// park says who may touch the connection meanwhile (see loopParked).
	lio  *loopIO
	park atomic.Int32
	// parkedAt is when the loop last parked the connection, and listed
	// says it is in the loop's parked; both belong to the loop. expire,
	// if set, is when the batch's wait for other nodes ends, for a batch
	// that spent part of forwardTimeout parked (see assemble).
	parkedAt time.Time
	listed   bool
	expire   time.Time
	// frames counts the requests handleBuffered has handled.
	frames int
	// active is when an event loop last read from the connection, for
	// Config.IdleTimeout; armed says serve has set a read deadline for it.
	active time.Time
	armed  bool

	// stats are this connection's request counters, read by STAT from other
	// goroutines, hence atomic.
	stats counters
	// req are the request metrics of the goroutine serving the connection
	// (metrics.go): its event loop's, or own once it has a goroutine of
	// its own. own is read by Metrics, so it is set under srv.mu.
	req, own *reqStats
	// readAt is when the last read returned; tally counts the requests
	// handled since, until endBatch adds them to req. The responses in
	// wbuf[:counted] are in the tally (see countOutput).
	readAt  time.Time
	tally   opTally
	counted int
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{
		srv:    s,
		nc:     wrapConn(nc),
		rbuf:   make([]byte, initialBuf),
		wbuf:   make([]byte, 0, initialBuf),
		authed: len(s.cfg.Users) == 0,
		active: time.Now(),
	}
}

// serve runs the connection until the client leaves, sends something that is
// not the binary protocol, or the server shuts down.
func (c *conn) serve() {
	defer c.srv.removeConn(c)
	defer c.nc.Close()
	log := c.srv.log
	for {
		if quit := c.handleBuffered(); quit {
			c.flush()
			return
		}
		if err := c.flush(); err != nil {
			log.Debug("write failed", "peer", c.nc.RemoteAddr(), "err", err)
			return
		}
		c.armIdle() // before looking at closing: Shutdown's deadline must win
		if c.srv.closing.Load() {
			return
		}
		c.makeRoom()
		n, err := c.nc.Read(c.rbuf[c.w:])
		c.w += n
		c.stats[cBytesRead].Add(uint64(n))
		if n > 0 {
			c.readAt = time.Now()
		}
		if err != nil {
			if n > 0 {
				continue // handle what arrived with the error first
			}
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				if c.armed && !c.srv.closing.Load() {
					c.srv.idleKick(c)
				}
			case !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed):
				log.Debug("read failed", "peer", c.nc.RemoteAddr(), "err", err)
			}
			return
		}
	}
}

// armIdle sets the read deadline Config.IdleTimeout asks for before serve
// reads, or clears it once the connection turns out to be a peer's.
func (c *conn) armIdle() {
	idle := c.srv.cfg.IdleTimeout
	switch {
	case idle > 0 && !c.peer:
		c.nc.SetReadDeadline(time.Now().Add(idle))
		c.armed = true
	case c.armed:
		c.nc.SetReadDeadline(time.Time{})
		c.armed = false
	}
}

// handleBuffered handles every complete frame in the read buffer, appending
// responses to wbuf. It reports whether the connection must close.
func (c *conn) handleBuffered() (quit bool) {
	quit = c.handleFrames()
	c.dropVBuckets()
	return quit
}

func (c *conn) handleFrames() (quit bool) {
	for {
		if c.skip > 0 {
			n := min(c.skip, uint64(c.w-c.r))
			c.r += int(n)
			c.skip -= n
			if c.skip > 0 {
				return false
			}
		}
		req, n, err := protocol.Parse(c.rbuf[c.r:c.w], protocol.MagicRequest, c.srv.maxBody)
		switch err {
		case nil:
			c.r += n
			c.frames++
			if c.handle(&req) {
				return true
			}
		case protocol.ErrIncomplete:
			return false
		case protocol.ErrTooLarge:
			if !c.refuseTooLarge(&req) {
				return false // wait for the key to arrive
			}
			if c.skip > c.srv.maxSkip {
				c.srv.log.Debug("closing connection: declared body far over the frame limit",
					"peer", c.nc.RemoteAddr(), "op", req.Opcode, "body", req.BodyLen, "limit", c.srv.maxBody)
				return true
			}
		case protocol.ErrBadLengths:
			c.wbuf = protocol.AppendError(c.wbuf, req.Opcode, protocol.StatusInvalidArgs, req.Opaque)
			return true
		default: // protocol.ErrBadMagic: not our protocol; nothing to answer.
			return true
		}
		if len(c.wbuf) >= flushAt {
			c.dropVBuckets() // before their acknowledgements go out
			if c.lio != nil {
				return false // an event loop never blocks: it hands c off
			}
			if c.flush() != nil {
				return true
			}
		}
	}
}

// send queues a request for another node (see peers.send). It leaves when
// the batch is flushed, in one write with the batch's other requests for
// the same peer connection.
func (c *conn) send(addr string, frame []byte, op protocol.Opcode) *call {
	cl := c.newCall()
	// Most of a batch's requests go on connections it already used: find
	// them without the pool's lock and map.
	slot := peerSlot(op)
	for _, pc := range c.kicks {
		if pc.addr == addr && pc.slot == slot && !pc.failed() {
			pc.queue(cl, frame, op)
			return cl
		}
	}
	pc := c.srv.peers.queueCall(addr, cl, frame, op)
	if pc != nil && !slices.Contains(c.kicks, pc) {
		c.kicks = append(c.kicks, pc)
	}
	return cl
}

// maxSlab bounds the calls of one slab, so that one a slow peer keeps
// alive is small.
const maxSlab = 256

// recycleCalls lets newCall reuse the slab from the start once every call
// the connection made is complete: then no peer connection refers to any.
// Calls of async replication are not waited for; until they complete the
// slab fills on, and then newCall starts another.
func (c *conn) recycleCalls() {
	if c.slabUsed > 0 && c.peerWait.pending.Load() == 0 {
		c.slabUsed = 0
	}
}

// newCall returns a pending call of the connection's waiter, from slab:
// a batch's calls cost no allocation each. recycleCalls, after each batch,
// starts the slab over once every call in it is complete.
func (c *conn) newCall() *call {
	w := c.waiter()
	if c.slabUsed == len(c.slab) {
		// The calls of the full slab may still be pending: a new one.
		c.slab, c.slabUsed = make([]call, min(max(16, 2*len(c.slab)), maxSlab)), 0
	}
	cl := &c.slab[c.slabUsed]
	c.slabUsed++
	*cl = call{w: w}
	w.pending.Add(1)
	return cl
}

// kickPeers sends what the batch queued for other nodes.
func (c *conn) kickPeers() {
	for i, pc := range c.kicks {
		pc.kick()
		c.kicks[i] = nil
	}
	c.kicks = c.kicks[:0]
}

// refuseTooLarge answers a frame whose declared body exceeds the limit and
// arranges for its body to be skipped unbuffered. Like memcached, a refused
// SET also deletes the key's old value, so a reader cannot see stale data
// after a write that failed; for that it needs the key to have arrived
// first; it reports false while it waits.
func (c *conn) refuseTooLarge(req *protocol.Request) bool {
	if req.Opcode.Loud() == protocol.OpSet && req.KeyLen <= protocol.MaxKeyLen {
		keyAt := protocol.HeaderLen + int(req.ExtrasLen)
		if c.w-c.r < keyAt+int(req.KeyLen) {
			return false
		}
		c.srv.cfg.Store.Delete(c.rbuf[c.r+keyAt:c.r+keyAt+int(req.KeyLen)], 0)
	}
	c.wbuf = protocol.AppendError(c.wbuf, req.Opcode, protocol.StatusValueTooLarge, req.Opaque)
	c.r += protocol.HeaderLen
	c.skip = uint64(req.BodyLen)
	return true
}

// makeRoom prepares rbuf for the next Read: it moves a partial frame to the
// front and grows the buffer if that frame is larger than it. Growth doubles
// at most, so a client that declares a large body and stops sending costs
// only what it sent.
func (c *conn) makeRoom() {
	if c.r == c.w {
		c.r, c.w = 0, 0
		if len(c.rbuf) > keepBuf {
			c.rbuf = make([]byte, initialBuf)
		}
		return
	}
	pending := c.rbuf[c.r:c.w]
	need := len(pending) + 1
	if c.skip == 0 && len(pending) >= protocol.HeaderLen {
		h := protocol.ParseHeader(pending)
		if h.BodyLen > c.srv.maxBody {
			// A refused frame waiting for its key: see refuseTooLarge.
			need = protocol.HeaderLen + int(h.ExtrasLen) + int(h.KeyLen)
		} else {
			need = protocol.HeaderLen + int(h.BodyLen)
		}
	}
	if need > len(c.rbuf) {
		size := min(need, max(2*len(c.rbuf), len(pending)+initialBuf))
		nb := make([]byte, size)
		c.w = copy(nb, pending)
		c.r = 0
		c.rbuf = nb
		return
	}
	if c.r > 0 && len(c.rbuf)-c.w < need-len(pending) || c.w == len(c.rbuf) {
		c.w = copy(c.rbuf, pending)
		c.r = 0
	}
}

// flush writes the pending responses, first waiting for those other nodes
// owe.
func (c *conn) flush() error {
	c.kickPeers()
	c.assemble()
	c.recycleCalls()
	if len(c.wbuf) == 0 {
		c.endBatch() // quiet requests that answered nothing
		return nil
	}
	c.countOutput()
	n, err := c.nc.Write(c.wbuf)
	c.stats[cBytesWritten].Add(uint64(n))
	c.endBatch()
	if cap(c.wbuf) > keepBuf {
		c.wbuf = make([]byte, 0, initialBuf)
	} else {
		c.wbuf = c.wbuf[:0]
	}
	c.counted = 0
	if cap(c.spare) > keepBuf {
		c.spare = nil
	}
	return err
}
