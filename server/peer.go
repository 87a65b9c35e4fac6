package server

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"vbcache/protocol"
)

// Peer connections carry requests this node forwards to the owners of their
// vbuckets, and the stream messages of replication and moves (replicate.go).
// Each peer has two persistent, pipelined connections: streamSlot's carries
// every stream message, requestSlot's everything else. So each kind reaches
// the peer in the order this node sent it. A peer connection opens with
// HELLO carrying peerAgent, which tells the receiving node never to forward
// again: it answers NOT_MY_VBUCKET instead.
//
// Why two: a receiver serves a connection's requests in order, and a
// forwarded write waits there until the receiver's copies of it are
// acknowledged. On one connection per peer, copies would queue behind such
// writes, and with legacy clients on every node the waits can form a
// cycle: a write A forwarded to B waits on B for B's copy to C; on the
// connection from B to C that copy queues behind a write B forwarded to C,
// which waits for C's copy to A; that copy queues behind a write C
// forwarded to A, which waits for A's copy to B, queued behind the first
// write. Every write then times out. Stream messages never wait on the
// receiver, so on connections of their own they always flow.

const (
	streamSlot  = 0
	requestSlot = 1
	peerConns   = 2
	peerAgent   = "vbcache-peer"
	dialTimeout = 2 * time.Second
	peerBufSize = 64 << 10
	// peerKeepBuf is the largest output buffer a peer connection keeps
	// between writes.
	peerKeepBuf = 1 << 20
	// peerBacklog is how much output a peer connection holds unwritten
	// before the requests queued on it are marked behind (see call):
	// async replication then waits for their acknowledgements, so a
	// replica that does not keep up slows writes down instead of growing
	// this node's memory without bound.
	peerBacklog = 4 << 20
	// peerAuthRetry is how long after a peer refused this node's
	// credentials requests to it fail without a new dial.
	peerAuthRetry = time.Second
)

var (
	errPeerClosed = errors.New("server: peer connection closed")
	errPeerGone   = errors.New("server: peer left the cluster map")
	errPeerAuth   = errors.New("server: peer refused this node's credentials")
)

// PeerAuth are the SASL PLAIN credentials a node presents to its peers.
type PeerAuth struct {
	User, Password string
}

// call is one request sent to a peer, and its outcome once done.
type call struct {
	done  atomic.Bool
	copy  bool // a stream message (see isCopy); guarded by the peerConn's mu
	quiet bool // sent quiet: only a failure is answered; guarded likewise
	// behind says that when it was queued its connection had more than
	// peerBacklog bytes it could not write yet: the peer is not keeping
	// up. Set by queue, for its caller.
	behind bool
	queued time.Duration // when its write began to fill, after its peerConn's start; if copy
	// expired says its caller's batch waited out forwardTimeout for it
	// already: waiting for it again returns at once. Only the caller's
	// goroutine uses it.
	expired bool
	w       *waiter // nil: no one waits
	resp    []byte  // the whole response frame; owned by the call
	err     error
}

// newCall returns a pending call of w's (w may be nil).
func newCall(w *waiter) *call {
	if w != nil {
		w.pending.Add(1)
	}
	return &call{w: w}
}

// complete finishes the call with a response or an error and wakes its
// waiter if it waits for it. It is called once.
func (c *call) complete(resp []byte, err error) {
	c.resp, c.err = resp, err
	c.done.Store(true)
	if c.w != nil {
		c.w.completed(c)
	}
}

// peers is the pool of connections to other nodes, by memcached address.
type peers struct {
	auth     *PeerAuth
	log      *slog.Logger
	refusals sometimes // limits the warnings about peers refusing auth

	// streamLost, if set, is told the address of a peer whose stream
	// connection failed with stream messages unacknowledged (see
	// replicator.lost). Set before the first send.
	streamLost func(addr string)
	// expected, if set, are the clients a stream connection's writer holds
	// its copies for (hold.go); nil without Config.CopyHold. Set before
	// the first send.
	expected *expected

	mu    sync.Mutex // guards conns, retired and closed
	conns map[string]*[peerConns]*peerConn
	// retired are connections to nodes that left the map, which close
	// soon (see retain).
	retired []*peerConn
	closed  bool
	wg      sync.WaitGroup // every peer connection's goroutines
}

func newPeers(auth *PeerAuth, log *slog.Logger) *peers {
	return &peers{auth: auth, log: log, conns: make(map[string]*[peerConns]*peerConn)}
}

// send forwards frame (a whole request) to the node at addr, rewriting its
// opcode to op and its opaque to one of the connection's own, on the
// connection for op (see peerSlot). It does not block on the network: the
// call completes when the response arrives or the connection fails.
func (p *peers) send(addr string, frame []byte, op protocol.Opcode, w *waiter) *call {
	c, pc := p.queue(addr, frame, op, w)
	if pc != nil {
		pc.kick()
	}
	return c
}

// queue is send without waking the connection's writer: the request goes
// out with the next kick of pc (nil if the call failed at once). A client
// connection queues a whole batch's requests and kicks each peer
// connection once.
func (p *peers) queue(addr string, frame []byte, op protocol.Opcode, w *waiter) (*call, *peerConn) {
	c := newCall(w)
	return c, p.queueCall(addr, c, frame, op)
}

// queueCall is queue for a call the caller made.
func (p *peers) queueCall(addr string, c *call, frame []byte, op protocol.Opcode) *peerConn {
	pc, err := p.conn(addr, peerSlot(op))
	if err != nil {
		c.complete(nil, err)
		return nil
	}
	pc.queue(c, frame, op)
	return pc
}

// conn returns a live connection to addr in slot i, dialling a new one if
// the slot is empty or its connection failed.
func (p *peers) conn(addr string, i int) (*peerConn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errPeerClosed
	}
	slots := p.conns[addr]
	if slots == nil {
		slots = new([peerConns]*peerConn)
		p.conns[addr] = slots
	}
	pc := slots[i]
	if pc == nil || pc.failed() {
		if err := pc.refusedRecently(); err != nil {
			p.mu.Unlock()
			return nil, err
		}
		pc = &peerConn{addr: addr, slot: i, log: p.log, refusals: &p.refusals, wake: make(chan struct{}, 1), start: time.Now()}
		if i == streamSlot {
			pc.lost, pc.expected = p.streamLost, p.expected
		}
		slots[i] = pc
		p.wg.Go(func() { pc.run(p.auth) })
	}
	p.mu.Unlock()
	return pc, nil
}

// retireGrace is how long a connection to a node that left the map stays
// open for the answers to the requests already sent on it.
const retireGrace = time.Second

// retain forgets the connections to every peer not in keep: nodes that
// left the map. They no longer show in lag, and new requests never use
// them. Each closes once nothing is pending on it, or after retireGrace:
// a node that leaves gracefully answers what it has read, and its answers
// are as good as they were before the map changed. Calls still pending
// then fail.
func (p *peers) retain(keep map[string]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.retired = slices.DeleteFunc(p.retired, (*peerConn).failed)
	for addr, slots := range p.conns {
		if keep[addr] {
			continue
		}
		for _, pc := range slots {
			if pc != nil && !pc.failed() {
				pc.retire()
				p.retired = append(p.retired, pc)
			}
		}
		delete(p.conns, addr)
	}
}

// close closes every peer connection, failing pending calls, and waits for
// their goroutines to end.
func (p *peers) close() {
	p.mu.Lock()
	p.closed = true
	for _, slots := range p.conns {
		for _, pc := range slots {
			if pc != nil {
				pc.fail(errPeerClosed)
			}
		}
	}
	for _, pc := range p.retired {
		pc.fail(errPeerClosed)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// peerConn is one pipelined connection to a peer. Requests are queued in
// out and pending by send and written by the run goroutine; responses are
// matched to pending in order.
type peerConn struct {
	addr     string
	log      *slog.Logger
	refusals *sometimes    // the pool's: limits warnings about refusals
	wake     chan struct{} // tells the writer there is output; capacity 1
	start    time.Time
	slot     int               // its index in the pool's slots for addr
	lost     func(addr string) // the pool's streamLost, on a stream connection
	dead     atomic.Bool       // err is set: callers need not take mu to know
	// expected is the pool's, on a stream connection; holding says its
	// writer holds copies for them (hold.go).
	expected *expected
	holding  atomic.Bool
	// holdTimer bounds the writer's holds; the writer's own, made at its
	// first hold.
	holdTimer *time.Timer

	mu  sync.Mutex // guards the fields below
	nc  net.Conn
	out []byte
	// pending[head:] are unanswered, in the order queued, with opaques
	// counting up to opaque; nil for a NOOP endQuiet added.
	pending   []*call
	head      int
	copies    int // the stream messages among pending[head:]
	opaque    uint32
	quietTail bool // the last request in out is quiet (see endQuiet)
	// outAt is when the first copy in out was queued, after start, if
	// outStamped; every copy in out counts as queued then (see lag).
	outAt      time.Duration
	outStamped bool
	answers    uint64    // responses read, for watch
	retiring   bool      // the peer left the map: close once nothing is pending
	err        error     // set once; the connection is then dead
	errAt      time.Time // when err was set
}

func (pc *peerConn) failed() bool { return pc.dead.Load() }

// refusedRecently returns pc's error if the peer refused this node's
// credentials less than peerAuthRetry ago: requests fail at once rather
// than each dial anew. pc may be nil.
func (pc *peerConn) refusedRecently() error {
	if pc == nil {
		return nil
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if errors.Is(pc.err, errPeerAuth) && time.Since(pc.errAt) < peerAuthRetry {
		return pc.err
	}
	return nil
}

// queue queues frame for call c with its opcode set to op and a fresh
// opaque; kick sends it.
func (pc *peerConn) queue(c *call, frame []byte, op protocol.Opcode) {
	pc.mu.Lock()
	if pc.err != nil {
		err := pc.err
		pc.mu.Unlock()
		c.complete(nil, err)
		if isCopy(op) {
			pc.streamLost(err)
		}
		return
	}
	if isCopy(op) {
		if !pc.outStamped { // one clock read per write, not per copy
			pc.outAt, pc.outStamped = time.Since(pc.start), true
			if pc.expected != nil {
				pc.expected.streams.Add(1)
			}
		}
		c.copy, c.queued = true, pc.outAt
		pc.copies++
	}
	c.behind = len(pc.out) > peerBacklog
	op = quietCopy(op)
	c.quiet = op.IsQuiet()
	pc.quietTail = c.quiet
	pc.opaque++
	at := len(pc.out)
	pc.out = append(pc.out, frame...)
	pc.out[at+1] = byte(op)
	binary.BigEndian.PutUint32(pc.out[at+12:], pc.opaque)
	pc.pending = append(pc.pending, c)
	pc.mu.Unlock()
}

// unstamp notes that out holds no copy any more. pc.mu is held.
func (pc *peerConn) unstamp() {
	if pc.outStamped && pc.expected != nil {
		pc.expected.streams.Add(-1)
	}
	pc.outStamped = false
}

// quietCopy returns the quiet form of a copy of a write: SET_WITH_META and
// DEL_WITH_META go as SETQ_WITH_META and DELQ_WITH_META, which the receiver
// answers only if it refuses them. A NOOP after them (see endQuiet)
// acknowledges all that came before: one response per write rather than
// one per copy, which is most of what a replica would otherwise send, and
// lets the reader complete a whole write's copies at once. Other requests
// keep their opcode.
func quietCopy(op protocol.Opcode) protocol.Opcode {
	switch op {
	case protocol.OpSetWithMeta:
		return protocol.OpSetQWithMeta
	case protocol.OpDelWithMeta:
		return protocol.OpDelQWithMeta
	}
	return op
}

// noop is the request endQuiet appends; its opaque is set when queued.
var noop = protocol.AppendHeader(nil, protocol.MagicRequest, protocol.OpNoop, 0, 0, 0, 0, 0, 0, 0)

// quietOK is the response of a quiet request that got none: a success.
var quietOK = protocol.AppendHeader(nil, protocol.MagicResponse, protocol.OpNoop, 0, 0, 0, 0, 0, 0, 0)

// endQuiet appends a NOOP if the output ends with a quiet request, so that
// its response acknowledges the quiet requests before it. pc.mu is held.
func (pc *peerConn) endQuiet() {
	if !pc.quietTail {
		return
	}
	pc.quietTail = false
	pc.opaque++
	at := len(pc.out)
	pc.out = append(pc.out, noop...)
	binary.BigEndian.PutUint32(pc.out[at+12:], pc.opaque)
	pc.pending = append(pc.pending, nil) // no one waits for it
}

// retire closes the connection once no call is pending on it (see
// answered), or after retireGrace, failing what is still pending with
// errPeerGone.
func (pc *peerConn) retire() {
	pc.mu.Lock()
	idle := pc.head == len(pc.pending)
	pc.retiring = true
	pc.mu.Unlock()
	if idle {
		pc.fail(errPeerGone)
		return
	}
	time.AfterFunc(retireGrace, func() { pc.fail(errPeerGone) })
}

// refused fails the connection with err, an errPeerAuth, and warns, at
// most every warnEvery for the whole pool.
func (pc *peerConn) refused(err error) {
	if ok, suppressed := pc.refusals.allow(warnEvery); ok {
		pc.log.Warn("another node refused this node: check the peer user and its password in both nodes' auth files",
			"peer", pc.addr, "err", err, "refused_since_last_warning", suppressed)
	}
	pc.fail(err)
}

// kick tells the writer there is output.
func (pc *peerConn) kick() {
	select {
	case pc.wake <- struct{}{}:
	default:
	}
}

// fail marks the connection dead with err, closes it and fails every
// pending call. Only the first error counts.
func (pc *peerConn) fail(err error) {
	pc.mu.Lock()
	if pc.err != nil {
		pc.mu.Unlock()
		return
	}
	pc.err, pc.errAt = err, time.Now()
	pc.dead.Store(true)
	pending := pc.pending[pc.head:]
	copies := pc.copies
	pc.unstamp()
	pc.pending, pc.head, pc.out, pc.copies = nil, 0, nil, 0
	nc := pc.nc
	pc.mu.Unlock()
	if nc != nil {
		nc.Close()
	}
	for _, c := range pending {
		if c != nil {
			c.complete(nil, err)
		}
	}
	if copies > 0 {
		pc.streamLost(err)
	}
	pc.kick() // so the writer sees the error and returns
}

// streamLost reports that stream messages failed on pc with err, so that
// the streams they belong to start over (replicator.lost): the peer may
// not have applied them, and later ones would leave a gap. Not when the
// peer left the map or this node is closing: then the streams end. On a
// goroutine of its own: a caller may hold a vbucket's lock, or the pool's.
func (pc *peerConn) streamLost(err error) {
	if pc.lost != nil && !errors.Is(err, errPeerGone) && !errors.Is(err, errPeerClosed) {
		go pc.lost(pc.addr)
	}
}

// run dials, shakes hands, then writes queued requests until the
// connection fails; a second goroutine reads responses.
func (pc *peerConn) run(auth *PeerAuth) {
	nc, br, err := dialPeer(pc.addr, auth)
	switch {
	case errors.Is(err, errPeerAuth):
		pc.refused(err)
		return
	case err != nil:
		pc.log.Debug("peer unreachable", "peer", pc.addr, "err", err)
		pc.fail(err)
		return
	}
	pc.mu.Lock()
	if pc.err != nil { // closed while dialling
		pc.mu.Unlock()
		nc.Close()
		return
	}
	pc.nc = nc
	pc.mu.Unlock()
	var others sync.WaitGroup
	stop := make(chan struct{})
	others.Go(func() { pc.readLoop(br) })
	others.Go(func() { pc.watch(stop) })
	defer others.Wait()
	defer close(stop)

	var buf []byte
	for range pc.wake {
		pc.gather()
		pc.holdCopies()
		pc.mu.Lock()
		if pc.err != nil {
			pc.mu.Unlock()
			return
		}
		pc.endQuiet()
		buf, pc.out = pc.out, buf[:0]
		pc.unstamp()
		pc.mu.Unlock()
		if len(buf) == 0 {
			continue
		}
		if _, err := nc.Write(buf); err != nil {
			pc.fail(fmt.Errorf("server: writing to peer %s: %w", pc.addr, err))
			return
		}
		if cap(buf) > peerKeepBuf {
			buf = nil // a backfill's burst: do not keep its buffer for good
		}
	}
}

const (
	// peerStallCheck is how often a peer connection's watchdog looks for
	// a stall (see watch).
	peerStallCheck = time.Second
	// streamStall is the stall a stream connection is allowed. A receiver
	// answers nothing while it empties vbuckets for DEL_VBUCKET, a scan of
	// its whole store that may take seconds on a large one; failing the
	// connection then would start every stream over (replicator.lost),
	// with another scan. A receiver that is gone is failed over by
	// membership in seconds, which ends its connections first.
	streamStall = time.Minute
)

// stallLimit is how long requests may wait on pc with no response at all
// before watch fails it.
func (pc *peerConn) stallLimit() time.Duration {
	if pc.slot == streamSlot {
		return streamStall
	}
	return forwardTimeout
}

// watch fails the connection once requests have waited stallLimit with no
// response at all, until stop is closed. Responses come in order, so every
// request behind an unanswered one waits as long: the peer is stuck or
// gone. Failing completes the calls with errForwardTimeout, frees what the
// connection holds, and has the next request dial anew.
func (pc *peerConn) watch(stop <-chan struct{}) {
	limit := pc.stallLimit()
	t := time.NewTicker(peerStallCheck)
	defer t.Stop()
	// since is a tick when nothing waited, or the last seen progress: a
	// stall counts from a tick before its first request.
	since, seen := time.Now(), uint64(0)
	for {
		var now time.Time
		select {
		case <-stop:
			return
		case now = <-t.C:
		}
		pc.mu.Lock()
		waiting, answers := pc.head < len(pc.pending), pc.answers
		pc.mu.Unlock()
		switch {
		case !waiting || answers != seen:
			since, seen = now, answers
		case now.Sub(since) >= limit+peerStallCheck:
			pc.fail(fmt.Errorf("server: peer %s answered nothing for %v: %w", pc.addr, limit, errForwardTimeout))
			return
		}
	}
}

// gatherYields bounds how often the writer yields to let more requests
// join a write.
const gatherYields = 4

// gather lets the goroutines that are ready to run (client connections in
// the middle of their batches) queue their requests before the writer takes
// the output, for as long as they keep adding to it, so that one write
// carries several batches. It only yields the processor: on an idle node
// it costs nothing.
func (pc *peerConn) gather() {
	pc.mu.Lock()
	n := len(pc.out)
	pc.mu.Unlock()
	for range gatherYields {
		runtime.Gosched()
		pc.mu.Lock()
		grew := len(pc.out) > n
		n = len(pc.out)
		pc.mu.Unlock()
		if !grew {
			return
		}
	}
}

// peerSlot returns the slot of the connection that carries op: see the top
// of this file.
func peerSlot(op protocol.Opcode) int {
	if isCopy(op) {
		return streamSlot
	}
	return requestSlot
}

// isCopy reports whether op is a stream message (replicate.go), whose
// backlog is the replication lag.
func isCopy(op protocol.Opcode) bool {
	return op == protocol.OpSetWithMeta || op == protocol.OpDelWithMeta || op == protocol.OpDelVBucket
}

// PeerLag is this node's replication backlog towards one peer.
type PeerLag struct {
	Peer string `json:"peer"` // its memcached address
	// Copies are the stream messages (copies of writes, backfill, resets)
	// sent or queued to it and not yet acknowledged.
	Copies int `json:"copies"`
	// Oldest is how long the oldest of them has waited since it was
	// queued; 0 if there are none.
	Oldest time.Duration `json:"oldest_ns"`
}

// lag returns the replication backlog towards every peer this node has
// had a connection to, by address.
func (p *peers) lag() []PeerLag {
	p.mu.Lock()
	lags := make([]PeerLag, 0, len(p.conns))
	conns := make([][peerConns]*peerConn, 0, len(p.conns))
	for addr, slots := range p.conns {
		lags = append(lags, PeerLag{Peer: addr})
		conns = append(conns, *slots)
	}
	p.mu.Unlock()
	for i, slots := range conns {
		for _, pc := range slots {
			if pc != nil {
				copies, oldest := pc.lag()
				lags[i].Copies += copies
				lags[i].Oldest = max(lags[i].Oldest, oldest)
			}
		}
	}
	slices.SortFunc(lags, func(a, b PeerLag) int { return strings.Compare(a.Peer, b.Peer) })
	return lags
}

// lag returns how many stream messages pc has not had acknowledged and
// how long the oldest has waited.
func (pc *peerConn) lag() (copies int, oldest time.Duration) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	for _, c := range pc.pending[pc.head:] {
		if c != nil && c.copy { // the first is the oldest: pending is in queue order
			return pc.copies, time.Since(pc.start) - c.queued
		}
	}
	return 0, 0
}

// readLoop completes pending calls with the responses, in order: a
// response completes its request and every quiet request before it, which
// succeeded.
func (pc *peerConn) readLoop(br *bufio.Reader) {
	var done []*call
	var resps [][]byte
	// complete completes the calls taken off pending so far; it runs
	// before any failure, which completes only those still pending.
	complete := func() {
		for i, c := range done {
			c.complete(resps[i], nil)
			done[i], resps[i] = nil, nil
		}
		done, resps = done[:0], resps[:0]
	}
	for {
		frame, err := readFrame(br)
		if err != nil {
			pc.fail(fmt.Errorf("server: reading from peer %s: %w", pc.addr, err))
			return
		}
		// Take this response and every other one already read whole, under
		// one lock; complete their calls after.
		pc.mu.Lock()
		for err == nil {
			switch {
			case respStatus(frame) == protocol.StatusAuthError:
				// Only a node that requires authentication, from a node
				// that did not authenticate, answers this.
				err = fmt.Errorf("%w: %s requires authentication and this node has no peer credentials", errPeerAuth, pc.addr)
			default:
				err = pc.answered(frame, &done, &resps)
			}
			if err != nil || !frameBuffered(br) {
				break
			}
			if frame, err = readFrame(br); err != nil { // bad magic
				err = fmt.Errorf("server: reading from peer %s: %w", pc.addr, err)
			}
		}
		if err == nil && pc.retiring && pc.head == len(pc.pending) {
			err = errPeerGone // every call answered: close (see retire)
		}
		pc.mu.Unlock()
		complete()
		switch {
		case errors.Is(err, errPeerAuth):
			pc.refused(err)
			return
		case err != nil:
			pc.fail(err)
			return
		}
	}
}

// frameBuffered reports whether br holds a whole frame, which can be read
// without blocking.
func frameBuffered(br *bufio.Reader) bool {
	if br.Buffered() < protocol.HeaderLen {
		return false
	}
	hdr, _ := br.Peek(protocol.HeaderLen)
	return br.Buffered() >= frameLen(hdr)
}

// frameLen returns the length of the frame whose header is hdr.
func frameLen(hdr []byte) int {
	return protocol.HeaderLen + int(binary.BigEndian.Uint32(hdr[8:12]))
}

// answered takes the calls frame answers off pending and appends them to
// done, with their responses to resps. pc.mu is held.
func (pc *peerConn) answered(frame []byte, done *[]*call, resps *[][]byte) error {
	waiting := len(pc.pending) - pc.head
	// The opaques of pending[head:] count up to pc.opaque.
	n := int(binary.BigEndian.Uint32(frame[12:16]) - (pc.opaque - uint32(waiting) + 1))
	if n < 0 || n >= waiting {
		return fmt.Errorf("server: peer %s sent an unrequested response", pc.addr)
	}
	for i := range n + 1 {
		c := pc.pending[pc.head+i]
		resp := frame
		if i < n {
			if c == nil || !c.quiet {
				// Left pending, with the rest: the failure completes them.
				pc.head += i
				return fmt.Errorf("server: peer %s did not answer a request", pc.addr)
			}
			resp = quietOK
		}
		pc.pending[pc.head+i] = nil
		if c == nil {
			continue // endQuiet's NOOP
		}
		if c.copy {
			pc.copies--
		}
		*done = append(*done, c)
		*resps = append(*resps, resp)
	}
	pc.head += n + 1
	pc.answers++
	if pc.head == len(pc.pending) {
		// Empty: start over at the front, so appends reuse the array,
		// unless a burst made it large.
		pc.pending, pc.head = pc.pending[:0], 0
		if cap(pc.pending) > peerKeepBuf/8 {
			pc.pending = nil
		}
	}
	return nil
}

// readFrame reads one response frame from br into a new buffer.
func readFrame(br *bufio.Reader) ([]byte, error) {
	hdr, err := br.Peek(protocol.HeaderLen)
	if err != nil {
		return nil, err
	}
	if hdr[0] != protocol.MagicResponse {
		return nil, protocol.ErrBadMagic
	}
	frame := make([]byte, frameLen(hdr))
	if _, err := io.ReadFull(br, frame); err != nil {
		return nil, err
	}
	return frame, nil
}

// dialPeer connects to a peer and says HELLO as a peer (and authenticates
// if auth is set), synchronously, before any request is queued on it.
func dialPeer(addr string, auth *PeerAuth) (net.Conn, *bufio.Reader, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	nc = wrapConn(nc)
	nc.SetDeadline(time.Now().Add(dialTimeout))
	hello := protocol.AppendFrame(nil, &protocol.Frame{
		Magic: protocol.MagicRequest, Opcode: protocol.OpHello, Key: []byte(peerAgent),
	})
	steps := 1
	if auth != nil {
		hello = protocol.AppendFrame(hello, &protocol.Frame{
			Magic: protocol.MagicRequest, Opcode: protocol.OpSASLAuth, Key: []byte("PLAIN"),
			Value: []byte("\x00" + auth.User + "\x00" + auth.Password),
		})
		steps++
	}
	br := bufio.NewReaderSize(nc, peerBufSize)
	if _, err := nc.Write(hello); err != nil {
		nc.Close()
		return nil, nil, err
	}
	for range steps {
		f, err := readFrame(br)
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
		h := protocol.ParseHeader(f)
		switch {
		case h.Opcode == protocol.OpSASLAuth && h.Status() == protocol.StatusAuthError:
			nc.Close()
			return nil, nil, fmt.Errorf("%w: %s refused user %q", errPeerAuth, addr, auth.User)
		case h.Status() != protocol.StatusOK:
			nc.Close()
			return nil, nil, fmt.Errorf("server: peer %s refused %s: status 0x%02x", addr, h.Opcode, uint16(h.Status()))
		}
	}
	nc.SetDeadline(time.Time{})
	return nc, br, nil
}
