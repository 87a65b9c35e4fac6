//go:build linux

package server

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Event loops (Linux). A connection is first served by an event loop rather
// than by a goroutine of its own: each loop owns an epoll instance
// (edge-triggered) holding its connections' sockets, and when one of them
// becomes readable the loop itself reads what arrived, handles every
// complete request and writes the responses, all without blocking.
//
// The reason is the cost per request at many connections with one request
// in flight each. A goroutine per connection reads until the socket says
// EAGAIN before the runtime's poller may wait for it, so each request costs
// a second, empty read, and a park and a wakeup of its goroutine. A loop
// reads only sockets that epoll reported ready, once each (again only when
// the read filled the buffer), and one epoll_wait returns many ready
// sockets. memcached works the same way.
//
// A batch whose responses other nodes owe (forwarded requests, copies of
// sync replication) parks its connection rather than block the loop: see
// park. Anything else that would block moves the connection to a goroutine
// of its own for the rest of its life (conn.serve): a write the socket
// does not take in full, a batch of responses past flushAt, QUIT, a
// request an owner disowned, which waits for a newer map. So a loop never
// waits for one client or node, and the blocking paths are the goroutine
// code. A client that pipelines (loopPipeline requests in one read) moves
// too, unless its batches wait for other nodes: it gains little from a
// loop, and its batches would delay the loop's other connections. (Kept on
// loops, 16 pipelining clients of one node on 2 CPUs saw three times the
// p99 latency. Parking their batches of replicated SETs instead cut the
// CPU per SET by an eighth: no goroutine to wake per batch.)
//
// A loop waits through the Go runtime's poller, not in epoll_wait: its epoll
// descriptor is itself pollable, so an idle loop is a parked goroutine
// holding no thread. syscall.RawConn.Read waits only after its function
// returns false, and the runtime forgets readiness it saw before the call;
// so the loop's function always tries epoll_wait (timeout 0) first and asks
// to wait only when nothing is ready. A known cost of waiting this way: the
// runtime polls the network only from an idle M (or from sysmon every
// 10 ms), so while every M runs a busy loop, a parked loop's wakeup can be
// late by up to 10 ms. Handing pipelining clients to goroutines keeps that
// rare (their batches are what kept loops busy for long).
//
// The sockets themselves are not in the runtime's poller while a loop
// serves them (see loopIO), so the loop reads and writes them with plain
// system calls and never waits on one.

const (
	// loopEvents is the most ready sockets one epoll_wait returns.
	loopEvents = 256
	// loopReads is how many full buffers a loop reads from one connection
	// before serving the others; the connection is served again after them.
	loopReads = 4
	// loopPipeline is the number of requests arriving in one read that
	// makes a connection a pipelining one, which is handed to a goroutine
	// of its own: its system calls are already shared by many requests, and
	// on a loop it would hold up the loop's other connections.
	loopPipeline = 8
	// epollET is EPOLLET as the uint32 of EpollEvent.Events (the syscall
	// package's constant is negative).
	epollET = 1 << 31
)

// eventLoop is one event loop; see above.
type eventLoop struct {
	srv  *Server
	epfd int
	file *os.File        // epfd, registered with the runtime's poller
	rc   syscall.RawConn // file's, to wait for epfd to become readable

	mu    sync.Mutex
	conns map[int32]*conn // by socket descriptor
	dead  bool            // the loop has ended; add nothing

	// req are the request metrics of every connection the loop serves
	// (metrics.go); only the loop's goroutine writes them.
	req reqStats

	// Belong to the loop's goroutine.
	events [loopEvents]syscall.EpollEvent
	again  []*conn // connections with input left to read, served next round
	next   []*conn
	n      int   // events from the last epoll_wait
	errno  error // its error
	waitFn func(uintptr) bool
	// With Config.IdleTimeout, or while connections are parked (checkAt
	// set): now is when the loop last woke. sweepAt is when it next looks
	// for idle connections; a read deadline on file at sweepAt wakes an
	// idle loop for that.
	now, sweepAt time.Time
	// parked are the connections parked since the loop last looked at
	// them, and checkAt when it next will, if any are (see checkParked);
	// the deadline on file is also set for that.
	parked  []*conn
	checkAt time.Time
}

// Parking. A connection whose batch waits for other nodes stays on its
// loop: the loop sends the batch's requests and goes on with its other
// connections, and the goroutine that completes the batch's last call (a
// peer connection's reader, see waiter.parkAll) finishes the batch there,
// with resume: it puts the responses in order and writes them without
// blocking, then gives the connection back to the loop. A client of a
// forwarding node with one request in flight so costs no goroutine of its
// own, nor the wake-ups of one, per request.
//
// A parked connection has no timer of its own. Once a second, while any
// are parked, the loop looks for those parked longer than forwardTimeout
// and moves them to goroutines, which spend what is left of it waiting
// with a timer, as any goroutine does (checkParked).
//
// conn.park says who may touch a connection of a loop:
const (
	loopServed  int32 = iota // the loop (also: a connection never on a loop)
	loopParked               // its batch waits for calls; resume owns it
	loopPending              // parked, and it has input the loop left unread
	loopClosing              // parked, and the loop has closed: resume ends it
	loopLeft                 // handed off or ended: no longer the loop's
)

// loopIO is what the loop holds of a connection it serves.
type loopIO struct {
	loop *eventLoop
	// fd is the loop's own duplicate of the socket, outside the runtime's
	// poller: the connection's net.Conn is closed while the loop serves it,
	// so each arriving request wakes one poller, not two, and the loop
	// reads and writes with plain system calls. Only the loop uses and
	// closes fd.
	fd int
	// What the hold of copies expects of the client (hold.go): answeredAt
	// is when resume last answered it a replicated write, until it sends
	// again; quick says it came back fast enough that time; awaited
	// says it is expected back, in generation gen.
	answeredAt time.Time
	quick      bool
	awaited    bool
	gen        uint32
}

// answered notes that the client was just answered a replicated write,
// and expects it back if it came back quickly last time.
func (lio *loopIO) answered(e *expected) {
	lio.answeredAt = time.Now()
	if lio.quick && !lio.awaited {
		lio.gen, lio.awaited = e.add(), true
	}
}

// arrived notes that the client sent something at at.
func (lio *loopIO) arrived(e *expected, at time.Time) {
	lio.left(e)
	if !lio.answeredAt.IsZero() {
		lio.quick = e.quick(at.Sub(lio.answeredAt))
		lio.answeredAt = time.Time{}
	}
}

// left notes that the client is no longer expected: it sent something, or
// its connection leaves the loop.
func (lio *loopIO) left(e *expected) {
	if lio.awaited {
		lio.awaited = false
		e.arrived(lio.gen)
	}
}

// startLoops starts one event loop per P. It returns nil if the system does
// not allow them, in which case every connection gets a goroutine.
func startLoops(s *Server) []*eventLoop {
	var loops []*eventLoop
	for range runtime.GOMAXPROCS(0) {
		l, err := newEventLoop(s)
		if err != nil {
			s.log.Warn("event loops unavailable; one goroutine per connection", "err", err)
			for _, l := range loops {
				l.file.Close()
			}
			return nil
		}
		loops = append(loops, l)
	}
	for _, l := range loops {
		s.loopWG.Go(l.run)
	}
	return loops
}

func newEventLoop(s *Server) (*eventLoop, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return nil, os.NewSyscallError("setnonblock", err)
	}
	f := os.NewFile(uintptr(epfd), "epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	// A deadline works only on a descriptor the runtime polls: this checks
	// that the loop can wait through the runtime's poller.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, err
	}
	l := &eventLoop{srv: s, epfd: epfd, file: f, rc: rc, conns: make(map[int32]*conn)}
	l.waitFn = func(fd uintptr) bool {
		for {
			l.n, l.errno = sysEpollPoll(int(fd), l.events[:])
			if l.errno != syscall.EINTR {
				break
			}
		}
		return l.n != 0 || l.errno != nil
	}
	return l, nil
}

// add makes c one of l's connections. It reports false, having changed
// nothing, if c cannot be served by a loop.
func (l *eventLoop) add(c *conn) bool {
	nc := c.nc // once c is in l, l owns c.nc
	rc, ok := rawConnOf(nc)
	if !ok {
		return false
	}
	fd := -1
	rc.Control(func(s uintptr) { fd = dupCloexec(int(s)) })
	if fd < 0 {
		return false
	}
	l.mu.Lock()
	// Input that arrived before this shows as ready at once.
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | epollET, Fd: int32(fd)}
	if l.dead || syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, fd, &ev) != nil {
		l.mu.Unlock()
		syscall.Close(fd)
		return false
	}
	c.lio = &loopIO{loop: l, fd: fd}
	c.req = &l.req
	l.conns[int32(fd)] = c
	l.mu.Unlock()
	nc.Close() // fd keeps the socket open
	return true
}

// dupCloexec returns a close-on-exec duplicate of fd, or -1.
func dupCloexec(fd int) int {
	for {
		r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
		if errno == 0 {
			return int(r)
		}
		if errno != syscall.EINTR {
			return -1
		}
	}
}

// remove takes c out of l and returns its descriptor, which gets no more
// events.
func (l *eventLoop) remove(c *conn) int {
	if e := l.srv.peers.expected; e != nil {
		c.lio.left(e)
	}
	fd := c.lio.fd
	l.mu.Lock()
	delete(l.conns, int32(fd))
	if !l.dead { // resume may end a connection after its loop closed epfd
		// Explicitly: a duplicate of fd made for a net.Conn would
		// otherwise keep it in the epoll set.
		syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, fd, nil)
	}
	l.mu.Unlock()
	c.lio = nil
	c.park.Store(loopLeft)
	return fd
}

// run serves l's connections until the server closes.
func (l *eventLoop) run() {
	defer func() {
		l.mu.Lock() // see remove
		l.file.Close()
		l.mu.Unlock()
	}()
	idle := l.srv.cfg.IdleTimeout
	if idle > 0 {
		l.now = time.Now()
		l.armSweep(idle)
	}
	// Every change to file's deadline comes before a look at closing, so
	// the deadline wakeLoops sets once closing is true is never lost.
	for !l.srv.closing.Load() {
		// Wait for events only when no connection has input left over.
		var err error
		if len(l.again) > 0 {
			l.waitFn(uintptr(l.epfd))
		} else {
			err = l.rc.Read(l.waitFn)
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			l.srv.log.Error("event loop failed", "err", err)
			break
		}
		if l.errno != nil {
			l.srv.log.Error("event loop failed", "err", os.NewSyscallError("epoll_wait", l.errno))
			break
		}
		if idle > 0 || !l.checkAt.IsZero() {
			l.now = time.Now()
		}
		l.next, l.again = l.again, l.next[:0]
		for i := range l.n {
			l.mu.Lock()
			c := l.conns[l.events[i].Fd]
			l.mu.Unlock()
			if c != nil {
				l.event(c, l.events[i].Events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0)
			}
		}
		l.n = 0
		for _, c := range l.next {
			if c.park.Load() == loopServed { // not parked, handed off or ended since
				l.step(c, false)
			}
		}
		clear(l.next)
		// After the steps, so a connection whose request arrived with
		// this wakeup counts as active.
		if idle > 0 && !l.now.Before(l.sweepAt) {
			l.sweep(idle)
		}
		if !l.checkAt.IsZero() && !l.now.Before(l.checkAt) {
			l.checkParked(l.now)
		}
	}
	l.closeAll()
}

// sweepEvery is how often a loop looks for connections idle longer than
// timeout: a connection is closed between timeout and timeout plus this.
func sweepEvery(timeout time.Duration) time.Duration {
	return min(max(timeout/4, 10*time.Millisecond), time.Second)
}

// armSweep schedules the next sweep.
func (l *eventLoop) armSweep(timeout time.Duration) {
	l.sweepAt = l.now.Add(sweepEvery(timeout))
	l.arm()
}

// arm sets the deadline of the loop's wait to the next sweep or the next
// look at parked connections, whichever comes first.
func (l *eventLoop) arm() {
	at := l.sweepAt
	if !l.checkAt.IsZero() && (at.IsZero() || l.checkAt.Before(at)) {
		at = l.checkAt
	}
	l.file.SetReadDeadline(at)
}

// parkCheck is how often a loop looks at its parked connections.
const parkCheck = time.Second

// checkParked moves the connections parked longer than forwardTimeout to
// goroutines of their own: their calls still wait, and no one would
// answer their clients otherwise if the peer never does. A connection
// whose calls complete meanwhile is resumed as usual; the waiter decides
// which comes first.
func (l *eventLoop) checkParked(now time.Time) {
	keep := l.parked[:0]
	for _, c := range l.parked {
		switch c.park.Load() {
		case loopParked, loopPending:
			if now.Sub(c.parkedAt) >= forwardTimeout && c.peerWait.on.CompareAndSwap(resumeAll, nil) {
				c.listed = false // resume will not run: c is the loop's
				c.expire = c.parkedAt.Add(forwardTimeout)
				l.handOff(c, false)
				continue
			}
			keep = append(keep, c)
		default: // given back, ended or handed off
			c.listed = false
		}
	}
	clear(l.parked[len(keep):])
	l.parked, l.checkAt = keep, time.Time{}
	if len(keep) > 0 {
		l.checkAt = now.Add(parkCheck)
	}
	l.arm()
}

// sweep closes the client connections that have sent nothing for timeout
// and schedules the next sweep. Connections of other nodes are exempt (see
// Config.IdleTimeout).
func (l *eventLoop) sweep(timeout time.Duration) {
	var idle []*conn
	l.mu.Lock()
	for _, c := range l.conns {
		if c.park.Load() == loopServed && !c.peer && l.now.Sub(c.active) >= timeout {
			idle = append(idle, c)
		}
	}
	l.mu.Unlock()
	for _, c := range idle {
		l.srv.idleKick(c)
		l.end(c)
	}
	l.armSweep(timeout)
}

// closeAll ends every connection l holds: they have answered all they have
// read.
func (l *eventLoop) closeAll() {
	l.mu.Lock()
	l.dead = true
	conns := make([]*conn, 0, len(l.conns))
	for _, c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		if l.closeParked(c) {
			l.end(c)
		}
	}
}

// closeParked leaves a parked connection for resume to end, and reports
// whether c is the loop's to end instead.
func (l *eventLoop) closeParked(c *conn) bool {
	for {
		switch st := c.park.Load(); st {
		case loopServed:
			return true // only the loop parks it
		case loopParked, loopPending:
			if c.park.CompareAndSwap(st, loopClosing) {
				return false
			}
		default: // ended or handed off meanwhile
			return false
		}
	}
}

// end closes c.
func (l *eventLoop) end(c *conn) {
	syscall.Close(l.remove(c))
	c.srv.removeConn(c)
}

// handOff moves c to a goroutine of its own, for good, with a new net.Conn:
// quit says c is to close once its responses are written.
func (l *eventLoop) handOff(c *conn, quit bool) {
	f := os.NewFile(uintptr(l.remove(c)), "")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		l.srv.log.Warn("connection dropped: no descriptor for its goroutine", "peer", c.nc.RemoteAddr(), "err", err)
		c.srv.removeConn(c)
		return
	}
	own := new(reqStats)
	c.srv.mu.Lock() // Shutdown and Close read c.nc, Metrics c.own
	c.nc = wrapConn(nc)
	c.own = own
	c.srv.mu.Unlock()
	c.req = own
	if !quit {
		go c.serve()
		return
	}
	go func() {
		c.flush()
		c.nc.Close()
		c.srv.removeConn(c)
	}()
}

// event serves c, whose socket epoll reported ready, unless it is parked:
// then resume has it reported again once it gives c back.
func (l *eventLoop) event(c *conn, hup bool) {
	for {
		switch c.park.Load() {
		case loopServed:
			l.step(c, hup)
			return
		case loopParked:
			if c.park.CompareAndSwap(loopParked, loopPending) {
				return
			}
			// Given back meanwhile: the loop's again.
		default:
			return
		}
	}
}

// park leaves c, whose batch waits for other nodes, to the goroutine that
// completes the batch's last call; see Parking above. more says c may have
// input left unread.
func (l *eventLoop) park(c *conn, more bool) {
	if l.checkAt.IsZero() {
		// The first parked connection: from now on the loop reads the
		// clock as it wakes, until none is parked.
		l.now = time.Now()
		l.checkAt = l.now.Add(parkCheck)
		l.arm()
	}
	c.parkedAt = l.now // when this round began
	if !c.listed {
		c.listed = true
		l.parked = append(l.parked, c)
	}
	st := loopParked
	if more {
		st = loopPending
	}
	c.park.Store(st)
	c.kickPeers()
	w := c.waiter()
	if w.resume == nil {
		w.resume = c.resume
	}
	w.parkAll()
}

// resume finishes the batch of a parked connection once all its calls are
// complete, on the goroutine that completed the last: it writes the
// responses and gives the connection back to its loop. A batch that would
// still have to wait (a request the owner disowned) or a write the socket
// does not take in full moves the connection to a goroutine instead.
func (c *conn) resume() {
	l := c.lio.loop
	if !c.settled() {
		l.handOff(c, false)
		return
	}
	e := c.srv.peers.expected
	copies := e != nil && c.waitsForCopies()
	c.assemble()
	c.recycleCalls()
	if copies {
		// Before the client can have its answer and send again; if the
		// write fails, remove forgets the expectation.
		c.lio.answered(e)
	}
	if !l.write(c) {
		return
	}
	for !c.park.CompareAndSwap(loopParked, loopServed) {
		switch c.park.Load() {
		case loopPending:
			// Input arrived meanwhile, or was left unread: have epoll
			// report it again, after c is the loop's.
			if c.park.CompareAndSwap(loopPending, loopParked) {
				l.rearm(c)
			}
		case loopClosing:
			l.end(c)
			return
		}
	}
}

// rearm has epoll report c's socket again if it is ready: modifying an
// edge-triggered registration checks the socket anew.
func (l *eventLoop) rearm(c *conn) {
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | epollET, Fd: int32(c.lio.fd)}
	l.mu.Lock()
	if !l.dead {
		syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_MOD, c.lio.fd, &ev)
	}
	l.mu.Unlock()
}

// step reads what c's client sent, handles it and writes the responses,
// without blocking; see the top of this file. hup says the event reported
// the client's end closed: then c reads on to the end of its input, since
// no event will come for it.
func (l *eventLoop) step(c *conn, hup bool) {
	lio := c.lio
	for range loopReads {
		c.makeRoom()
		space := len(c.rbuf) - c.w
		n, errno := sysRead(lio.fd, c.rbuf[c.w:])
		if errno == syscall.EINTR {
			continue
		}
		if n > 0 {
			c.w += n
			c.stats[cBytesRead].Add(uint64(n))
			c.active = l.now
			c.readAt = time.Now()
			if e := l.srv.peers.expected; e != nil {
				lio.arrived(e, c.readAt)
			}
		}
		switch {
		case errno == syscall.EAGAIN:
			return // nothing new: a stale event
		case n <= 0: // EOF or a read error
			if errno != nil && errno != syscall.ECONNRESET {
				l.srv.log.Debug("read failed", "peer", c.nc.RemoteAddr(), "err", errno)
			}
			l.end(c)
			return
		}
		c.frames = 0
		if quit := c.handleBuffered(); quit {
			l.handOff(c, true)
			return
		}
		if len(c.wbuf) >= flushAt {
			l.handOff(c, false)
			return
		}
		if len(c.slots) > 0 {
			l.park(c, n == space || hup)
			return
		}
		c.kickPeers() // copies of async replication owe no response
		c.recycleCalls()
		if !l.write(c) {
			return
		}
		switch {
		case l.srv.closing.Load():
			l.end(c)
			return
		case c.frames >= loopPipeline:
			l.handOff(c, false)
			return
		case n < space && !hup:
			return // read everything there was
		}
	}
	l.again = append(l.again, c) // the buffer filled each time: more waits
}

// write writes c's responses without blocking and reports whether c is
// still the loop's: a failed write ends c, and one the socket does not
// take in full moves c to a goroutine, which writes the rest.
func (l *eventLoop) write(c *conn) bool {
	done, err := c.writeNow()
	switch {
	case err != nil:
		l.srv.log.Debug("write failed", "peer", c.nc.RemoteAddr(), "err", err)
		l.end(c)
		return false
	case !done:
		l.handOff(c, false)
		return false
	}
	return true
}

// writeNow writes wbuf without blocking and reports whether all of it
// went, which ends the batch (endBatch); if not, wbuf holds the rest.
func (c *conn) writeNow() (done bool, err error) {
	c.countOutput()
	for len(c.wbuf) > 0 {
		n, errno := sysWrite(c.lio.fd, c.wbuf)
		if errno == syscall.EINTR {
			continue
		}
		if n > 0 {
			c.stats[cBytesWritten].Add(uint64(n))
			if n < len(c.wbuf) {
				c.wbuf = c.wbuf[:copy(c.wbuf, c.wbuf[n:])]
				c.counted = len(c.wbuf)
				continue
			}
			c.wbuf, c.counted = c.wbuf[:0], 0
			break
		}
		if errno == syscall.EAGAIN {
			return false, nil
		}
		if errno == nil {
			errno = syscall.EIO // a write of nothing
		}
		return false, errno
	}
	if cap(c.wbuf) > keepBuf {
		c.wbuf = make([]byte, 0, initialBuf)
	}
	c.endBatch()
	return true, nil
}

// wakeLoops makes every loop look at Server.closing.
func (s *Server) wakeLoops() {
	for _, l := range s.loops {
		l.file.SetReadDeadline(time.Now())
	}
}

// stats returns the request metrics of l's connections.
func (l *eventLoop) stats() *reqStats { return &l.req }

// held counts the connections l serves.
func (l *eventLoop) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}
