// Package server is the memcached binary protocol listener and dispatcher.
//
// A connection is served by reading everything the client has sent,
// handling every complete request in it in order, and writing all the
// responses with a single write. On Linux that is done by a few event loops,
// each serving many connections from one epoll instance, as memcached does
// (loop_linux.go); a connection that would block moves to a goroutine of its
// own, which does the same with blocking reads and writes (tidwall/redcon
// and net/http's Server are the models), and elsewhere every connection has
// one. Quiet commands answer only on error and every response echoes its
// request's opaque.
//
// Invariants:
//   - A connection's buffers grow only with the bytes a client has actually
//     sent, up to one frame of at most MaxItemSize plus header room; a larger
//     declared body is answered with StatusValueTooLarge and skipped without
//     being buffered, or, if it is more than skipFactor times that, answered
//     and the connection closed.
//   - Responses leave in request order.
//   - Shutdown stops accepting, lets every connection finish the requests it
//     has already read, flushes their responses and then closes it.
//
// In cluster mode (Config.Cluster set) a keyed request is served here only
// if this node holds its vbucket active (route.go); otherwise it is answered
// NOT_MY_VBUCKET or forwarded, with responses kept in request order
// (forward.go). Writes to a local vbucket are streamed to its replicas and
// to the servers it moves to (replicate.go, backfill.go). Peer connections
// are in peer.go.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"vbcache/store"
	"vbcache/vbucket"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("server: closed")

// Config configures a Server. The zero value of every field but Store is
// usable.
type Config struct {
	// Store holds the items. Required.
	Store *store.Store
	// MaxItemSize is the largest key plus value accepted; default 1 MiB. It
	// should equal the store's MaxItemSize.
	MaxItemSize int
	// MaxConns is the most client connections served at once; one more is
	// accepted and closed at once. Default 4096.
	MaxConns int
	// IdleTimeout closes a client connection that has sent nothing for
	// this long, as memcached's idle_timeout does (STAT idle_kicks counts
	// them). Zero, the default, keeps idle connections open. Connections
	// from other nodes (see PeerAuth) are exempt: they are pooled and idle
	// between bursts by design.
	IdleTimeout time.Duration
	// Users maps SASL PLAIN user names to passwords. When it is non-empty,
	// every command but NOOP, VERSION and the SASL ones answers
	// StatusAuthError until the connection authenticates.
	Users map[string]string
	// Version is what VERSION and STAT version report; default "1.6.0-vbcache".
	Version string
	// Logger receives connection-level events at Debug and errors at Warn;
	// default slog.Default(). Nothing is logged per request above Debug.
	Logger *slog.Logger
	// Cluster, when set, makes this a cluster node: keyed requests for
	// vbuckets other nodes hold are forwarded (legacy clients) or answered
	// NOT_MY_VBUCKET (vbucket-aware clients), and FLUSH applies to every
	// node. nil: single-node mode, where this node holds every vbucket and
	// ignores header vbuckets.
	Cluster Cluster
	// VBuckets is the number of vbuckets, default 1024: the cluster's, or
	// that of the one-node map a single node reports to GET_CLUSTER_CONFIG.
	VBuckets int
	// AsyncReplication acknowledges a client's write before its copies
	// reach the replicas; by default (false) the client waits for them.
	AsyncReplication bool
	// CopyHold is how long, at most, a write of copies to a replica waits
	// for the clients this node has just answered a replicated write to
	// write again, so that it carries their copies too (hold.go). Zero, the
	// default, sends copies at once. Only with sync replication.
	CopyHold time.Duration
	// PeerAuth, if set, are the SASL PLAIN credentials this node presents
	// to the other nodes it forwards and streams to; needed when they
	// require auth. With Users set, PeerAuth.User is also the only user
	// another node may authenticate as: a connection that says HELLO as a
	// peer and then authenticates as anyone else, or fails to, is refused
	// with StatusAuthError and a warning in the log. nil with Users set: no
	// connection may act as a peer.
	PeerAuth *PeerAuth
	// Now returns the current Unix time in seconds, used to turn relative
	// expirations into absolute ones. It must agree with the store's clock;
	// default time.Now().Unix.
	Now func() int64

	// goroutinePerConn serves every connection with a goroutine of its own,
	// never by an event loop; tests and benchmarks compare the two.
	goroutinePerConn bool
}

const (
	defaultMaxItemSize = 1 << 20
	defaultMaxConns    = 4096
	defaultVersion     = "1.6.0-vbcache"
	// headerRoom is what a frame may carry beyond MaxItemSize: the header's
	// extras (at most 255 bytes) and a key (at most 250).
	headerRoom = 512
	// skipFactor bounds what a refused frame may declare: a body up to
	// skipFactor times the frame limit is skipped and the connection goes
	// on, as memcached does and clients expect of a value that is too
	// large; a larger one is no value but a broken or hostile client, and
	// the connection is closed after the refusal.
	skipFactor = 16
)

// Server serves the memcached binary protocol. Its methods are safe for
// concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	start   time.Time
	maxBody uint32 // the frame limit: largest body accepted
	maxSkip uint64 // largest body refused without closing; see skipFactor
	router  *router
	peers   *peers
	repl    *replicator // nil in single-node mode

	stats struct{ backfillItems, backfillBytes, replErrors atomic.Uint64 }
	// peerRefusals limit the warnings about refused peers, one for each
	// reason: a node with the wrong credentials retries with every request
	// it forwards.
	peerRefusals [numRefusals]sometimes
	// timeoutWarnings limits the warnings about calls to peers that time
	// out, which under a partition every request may cause.
	timeoutWarnings sometimes
	// outstandingWarnings limits the errors about batches resumed with a
	// call outstanding (settledCall).
	outstandingWarnings sometimes

	stopRepl context.CancelFunc
	replDone sync.WaitGroup

	closing atomic.Bool

	mu        sync.Mutex // guards listeners, conns, closed, closedReq and statBase
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closed    counters  // counters of connections that have ended
	closedReq reqTotals // request metrics of ended connections that kept their own
	// statBase is what the counters summed to at the last "stats reset";
	// STAT reports the counts since. The counters themselves never go
	// down, so /metrics can export them as Prometheus counters.
	statBase [numCounters]uint64
	connWG   sync.WaitGroup

	// loops are the event loops (loop_linux.go), started with the first
	// connection; nil if none could be. Guarded by mu.
	loops      []*eventLoop
	loopsTried bool
	loopNext   atomic.Uint32
	loopWG     sync.WaitGroup

	currConns     atomic.Int64
	totalConns    atomic.Uint64
	rejectedConns atomic.Uint64
	idleKicks     atomic.Uint64
}

// New validates cfg, fills in its defaults and returns a Server that serves
// nothing until Serve is called.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("server: Config.Store is required")
	}
	if cfg.MaxItemSize == 0 {
		cfg.MaxItemSize = defaultMaxItemSize
	}
	if cfg.MaxItemSize < 0 || cfg.MaxItemSize > 1<<30 {
		return nil, fmt.Errorf("server: MaxItemSize %d out of range (1 B to 1 GiB)", cfg.MaxItemSize)
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = defaultMaxConns
	}
	if cfg.MaxConns < 0 {
		return nil, fmt.Errorf("server: MaxConns %d is negative", cfg.MaxConns)
	}
	if cfg.IdleTimeout < 0 {
		return nil, fmt.Errorf("server: IdleTimeout %v is negative", cfg.IdleTimeout)
	}
	if cfg.CopyHold < 0 {
		return nil, fmt.Errorf("server: CopyHold %v is negative", cfg.CopyHold)
	}
	if cfg.Version == "" {
		cfg.Version = defaultVersion
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = func() int64 { return time.Now().Unix() }
	}
	if cfg.VBuckets == 0 {
		cfg.VBuckets = vbucket.DefaultVBuckets
	}
	if err := vbucket.CheckCount(cfg.VBuckets); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s := &Server{
		router:    &router{cluster: cfg.Cluster, n: cfg.VBuckets},
		peers:     newPeers(cfg.PeerAuth, cfg.Logger),
		cfg:       cfg,
		log:       cfg.Logger,
		start:     time.Now(),
		maxBody:   uint32(cfg.MaxItemSize + headerRoom),
		maxSkip:   skipFactor * uint64(cfg.MaxItemSize+headerRoom),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
	}
	if cfg.Cluster != nil {
		s.repl = newReplicator(s, cfg.VBuckets, !cfg.AsyncReplication)
		s.peers.streamLost = s.repl.lost
		if cfg.CopyHold > 0 && !cfg.AsyncReplication {
			s.peers.expected = newExpected(cfg.CopyHold, s.peers.wakeHolders)
		}
		ctx, cancel := context.WithCancel(context.Background())
		s.stopRepl = cancel
		s.replDone.Go(func() { s.repl.run(ctx, cfg.Cluster) })
	}
	return s, nil
}

// stopStreams stops the backfill goroutine and closes the peer
// connections.
func (s *Server) stopStreams() {
	if s.stopRepl != nil {
		s.stopRepl()
		s.replDone.Wait()
	}
	s.peers.close()
}

// Serve accepts connections on l and serves each in its own goroutine. It
// blocks until l fails or the server shuts down, and then returns
// ErrServerClosed (after Shutdown) or the accept error. Serve closes l.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	if _, port, err := net.SplitHostPort(l.Addr().String()); err == nil {
		s.router.setPort(port)
	}
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			if isTemporary(err) {
				// Out of file descriptors and the like: back off as
				// net/http does rather than spin.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "delay", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		s.totalConns.Add(1)
		if s.currConns.Load() >= int64(s.cfg.MaxConns) {
			s.rejectedConns.Add(1)
			s.log.Debug("connection refused: max-conns reached", "peer", nc.RemoteAddr())
			nc.Close()
			continue
		}
		if !s.startConn(nc) {
			return ErrServerClosed
		}
	}
}

// startConn registers nc and serves it in a new goroutine. It reports false,
// having closed nc, if the server is shutting down.
func (s *Server) startConn(nc net.Conn) bool {
	c := newConn(s, nc)
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		nc.Close()
		return false
	}
	s.conns[c] = struct{}{}
	s.connWG.Add(1)
	if !s.loopsTried && !s.cfg.goroutinePerConn {
		s.loopsTried = true
		s.loops = startLoops(s)
	}
	loops := s.loops
	s.mu.Unlock()
	s.currConns.Add(1)
	if len(loops) > 0 && loops[s.loopNext.Add(1)%uint32(len(loops))].add(c) {
		return true
	}
	s.ownStats(c)
	go c.serve()
	return true
}

// isTemporary reports accept errors worth retrying (EMFILE, ENFILE,
// ECONNABORTED...).
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// ListenAndServe listens on the TCP address addr and calls Serve.
func (s *Server) ListenAndServe(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return s.Serve(l)
}

// Shutdown stops the server gracefully: it closes the listeners, lets every
// connection finish the requests it has read and flush their responses, and
// waits for the connections to end. If ctx ends first, the remaining
// connections are closed and ctx's error is returned. Safe to call twice.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.connWG.Wait(); s.loopWG.Wait(); close(done) }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		// Wake connections blocked in Read; a connection that is handling a
		// batch finishes it and sees closing before its next Read. Repeat
		// because a connection may re-arm its own deadline.
		s.mu.Lock()
		for c := range s.conns {
			c.nc.SetReadDeadline(time.Now())
		}
		s.wakeLoops()
		s.mu.Unlock()
		select {
		case <-done:
			s.stopStreams()
			return nil
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Close closes the listeners and every connection at once, dropping
// in-flight requests. Safe to call twice.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closing.Store(true)
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.nc.Close()
	}
	s.wakeLoops()
	s.mu.Unlock()
	s.stopStreams()
	return nil
}

// isPeerUser reports whether user is the one other nodes authenticate as.
func (s *Server) isPeerUser(user []byte) bool {
	return s.cfg.PeerAuth != nil && string(user) == s.cfg.PeerAuth.User
}

// refusal is why a connection that said HELLO as a peer was refused.
type refusal int

const (
	refusedPassword    refusal = iota // unknown user or wrong password
	refusedNotPeerUser                // a user, but not the peer user
	refusedNoAuth                     // requests without authenticating
	numRefusals
)

func (r refusal) String() string {
	return [numRefusals]string{
		"unknown user or wrong password", "authenticated as a user other than the peer user",
		"sent requests without authenticating",
	}[r]
}

// refusePeer logs that a connection that said HELLO as a peer was refused,
// and why: at most once every warnEvery for each reason.
func (s *Server) refusePeer(c *conn, user string, why refusal) {
	ok, suppressed := s.peerRefusals[why].allow(warnEvery)
	if !ok {
		return
	}
	want := ""
	if s.cfg.PeerAuth != nil {
		want = s.cfg.PeerAuth.User
	}
	s.log.Warn("refused a node: wrong peer credentials", "peer", c.nc.RemoteAddr(), "user", user,
		"reason", why.String(), "peer_user", want, "refused_since_last_warning", suppressed)
}

// idleKick counts and logs a connection closed by Config.IdleTimeout; the
// caller closes it.
func (s *Server) idleKick(c *conn) {
	s.idleKicks.Add(1)
	s.log.Debug("closing idle connection", "peer", c.nc.RemoteAddr(), "idle_timeout", s.cfg.IdleTimeout)
}

// removeConn is called by a connection's goroutine as it ends.
func (s *Server) removeConn(c *conn) {
	c.publishOps(true) // requests whose responses could not all be written
	s.mu.Lock()
	delete(s.conns, c)
	s.closed.addFrom(&c.stats)
	if c.own != nil {
		c.own.addTo(&s.closedReq)
	}
	s.mu.Unlock()
	s.currConns.Add(-1)
	s.connWG.Done()
}

// snapshot sums the counters of every connection, live or ended, since
// the server started.
func (s *Server) snapshot() [numCounters]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sumLocked()
}

// sumLocked is snapshot for a caller holding s.mu.
func (s *Server) sumLocked() (sum [numCounters]uint64) {
	for i := range sum {
		sum[i] = s.closed[i].Load()
	}
	for c := range s.conns {
		for i := range sum {
			sum[i] += c.stats[i].Load()
		}
	}
	return sum
}

// statSnapshot is snapshot since the last "stats reset", as STAT reports
// it.
func (s *Server) statSnapshot() (sum [numCounters]uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sum = s.sumLocked()
	for i := range sum {
		sum[i] -= s.statBase[i]
	}
	return sum
}

// resetStats starts STAT's request counters from zero, as "stats reset"
// does.
func (s *Server) resetStats() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.statBase = s.sumLocked()
}

// numGoroutinesHint is reported as "threads" in STAT.
func numGoroutinesHint() int { return runtime.GOMAXPROCS(0) }
