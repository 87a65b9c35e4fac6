// Package cluster is a node's membership layer: memberlist gossip, and the
// cluster map that says which node holds each vbucket.
//
// Invariants:
//
//   - One author. The coordinator, the live compatible member with the
//     oldest start time (from node metadata; ties broken by name), is the
//     only node that publishes maps. It computes the placement from the
//     member set with vbucket.Build and publishes it with rev = the highest
//     rev it has ever seen + 1 whenever the placement differs from the map
//     it holds. Any other node only adopts.
//   - Revs only rise. A node adopts a map only if its rev is higher than
//     the one it holds, so every node converges on the highest rev and a
//     client never sees a rev go backwards from one node.
//   - Spreading. A map does not fit a gossip (UDP) packet: 1024 vbuckets are
//     several kilobytes. The coordinator sends each new map to every member
//     over memberlist's reliable (TCP) user messages; every node advertises
//     the rev it holds in its metadata, and the coordinator re-sends to any
//     member that lags. Push/pull state exchange carries the map too, so a
//     joining node or the two sides of a healed partition catch up at once.
//   - Compatibility. A node with another vbucket count is refused: merges
//     with it fail (both sides log why) and gossip about it is ignored, so
//     it never enters the map.
//
// Memberlist's own log goes through the node's slog logger.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"vbcache/vbucket"
)

// Errors returned by New.
var (
	ErrNoGossipAddr = errors.New("cluster: Config.Gossip is required")
	ErrNoKVAddr     = errors.New("cluster: Config.KV is required")
	ErrBadGossipKey = errors.New("cluster: a gossip key is 16, 24 or 32 bytes")
)

// ErrNoOneToHandOver is returned by Leave when every other member is
// leaving too.
var ErrNoOneToHandOver = errors.New("cluster: no member stays to take this node's vbuckets")

// Config configures a Cluster.
type Config struct {
	// Name is this node's unique name in the cluster. Default: the
	// hostname and the gossip port.
	Name string
	// Gossip is the host:port memberlist binds (TCP and UDP). Port 0 picks
	// a free port. Required.
	Gossip string
	// Advertise is the host other nodes reach this node's gossip at.
	// Default: the host of Gossip, or an address memberlist picks if that
	// host is unspecified (0.0.0.0).
	Advertise string
	// Seeds are host:port gossip addresses of nodes to join. They are
	// tried once in New and then retried in the background while any of
	// them is not a live member, so nodes may start in any order and a node
	// cut off by a partition joins again once the seeds are reachable.
	Seeds []string
	// KV is the host:port clients reach this node's memcached listener at.
	// Required.
	KV string
	// HTTP is the host:port of this node's HTTP listener, or empty.
	HTTP string
	// VBuckets is the number of vbuckets, a power of two. Default 1024.
	VBuckets int
	// Replicas is the number of replica copies of each vbucket. Default 1;
	// negative means 0.
	Replicas int
	// ReplicaPartners bounds how many members hold the replicas of one
	// member's active vbuckets (vbucket.Place): 0, the default, spreads
	// them over every other member; otherwise at least Replicas. Like
	// Replicas, it takes effect where this node authors the map.
	ReplicaPartners int
	// Logger receives membership and map events. Default slog.Default().
	Logger *slog.Logger
	// JoinRetry is how often unreachable seeds are retried. Default 2s.
	JoinRetry time.Duration
	// Transport, if set, replaces memberlist's UDP/TCP transport (tests
	// use it to cut the network); Gossip then only names the node.
	Transport memberlist.NodeAwareTransport
	// GossipKey, if set, encrypts and authenticates all gossip with
	// AES-GCM (memberlist's keyring), and gossip without it is refused.
	// It is 16, 24 or 32 bytes (AES-128, -192, -256). Every node needs the
	// same key: a node without it, or with another, cannot join, and both
	// sides log why. Default: none, gossip in the clear.
	GossipKey []byte
	// PeerCheck fingerprints the credentials this node presents to the
	// others and accepts from them (see node.Config.PeerUser). A node
	// whose fingerprint differs cannot join, like one with another vbucket
	// count: its streams and forwarded requests would all be refused.
	// Default: none, for a cluster without credentials.
	PeerCheck string
}

// Cluster is this node's view of the cluster. Its methods are safe for
// concurrent use.
type Cluster struct {
	cfg   Config
	log   *slog.Logger
	start int64 // Unix nanoseconds, advertised in metadata
	ml    *memberlist.Memberlist

	gossipAddr string // advertised gossip address, fixed at start

	cur    atomic.Pointer[vbucket.Map] // the map this node holds; nil until the first
	advRev atomic.Int64                // rev last put in this node's metadata
	// readyRev and leaving are reported in metadata; advReady and
	// advLeaving are what was last put there.
	readyRev, advReady  atomic.Int64
	leaving, advLeaving atomic.Bool

	mu       sync.Mutex // guards the fields below
	changed  chan struct{}
	maxRev   int64              // highest rev seen anywhere
	members  map[string]*member // every node ever seen, by name
	lastSent map[string]sent    // the last map sent to each lagging member

	joinRefusal    string       // why the last join failed for the gossip key, or ""; New, then loop goroutine only
	rebalanceStart time.Time    // when the running rebalance began; loop goroutine only
	target         *vbucket.Map // placement for the last server list; loop goroutine only

	kick     chan struct{} // wakes the loop; capacity 1
	stop     chan struct{}
	loopDone sync.WaitGroup
	shutOnce sync.Once
}

// sent records a map sent to a member: a new rev goes out at once, the
// same rev again only after resendAfter.
type sent struct {
	rev int64
	at  time.Time
}

// member is what this node knows of another.
type member struct {
	name   string
	gossip string // host:port
	addr   net.IP
	port   uint16
	state  memberlist.NodeStateType
	meta   meta
	bad    string // why the node is not compatible, or ""
}

// memberlist timing, tighter than DefaultLANConfig so that a dead node is
// declared within about two seconds: a cache that waits 10 s to fail over
// serves errors meanwhile.
const (
	probeInterval    = 500 * time.Millisecond
	probeTimeout     = 300 * time.Millisecond
	suspicionMult    = 3
	gossipInterval   = 100 * time.Millisecond
	pushPullInterval = 5 * time.Second
	tcpTimeout       = 2 * time.Second
	loopInterval     = 200 * time.Millisecond
	resendAfter      = time.Second
	leaveTimeout     = 2 * time.Second
	deadNodeReclaim  = time.Second
)

// New starts gossip on cfg.Gossip, tries to join cfg.Seeds once, and starts
// the goroutine that authors maps (when this node coordinates), re-sends
// them to lagging members and retries seeds. Stop it with Shutdown.
func New(cfg Config) (*Cluster, error) {
	if cfg.Gossip == "" {
		return nil, ErrNoGossipAddr
	}
	if cfg.KV == "" {
		return nil, ErrNoKVAddr
	}
	if cfg.VBuckets == 0 {
		cfg.VBuckets = vbucket.DefaultVBuckets
	}
	if err := vbucket.CheckCount(cfg.VBuckets); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	cfg.Replicas = max(cfg.Replicas, 0)
	if err := vbucket.CheckPartners(cfg.Replicas, cfg.ReplicaPartners); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.JoinRetry <= 0 {
		cfg.JoinRetry = 2 * time.Second
	}
	host, portStr, err := net.SplitHostPort(cfg.Gossip)
	if err != nil {
		return nil, fmt.Errorf("cluster: gossip address %q: %w", cfg.Gossip, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("cluster: gossip address %q: bad port", cfg.Gossip)
	}
	if cfg.Name == "" {
		h, _ := os.Hostname()
		cfg.Name = fmt.Sprintf("%s:%d", h, port)
	}
	var keyring *memberlist.Keyring
	if len(cfg.GossipKey) > 0 {
		if memberlist.ValidateKey(cfg.GossipKey) != nil {
			return nil, fmt.Errorf("%w, not %d", ErrBadGossipKey, len(cfg.GossipKey))
		}
		if keyring, err = memberlist.NewKeyring(nil, cfg.GossipKey); err != nil {
			return nil, fmt.Errorf("cluster: gossip key: %w", err)
		}
	}

	c := &Cluster{
		cfg:      cfg,
		log:      cfg.Logger.With("node", cfg.Name),
		start:    time.Now().UnixNano(),
		changed:  make(chan struct{}),
		members:  make(map[string]*member),
		lastSent: make(map[string]sent),
		kick:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
	}

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = host
	if host == "" {
		mc.BindAddr = "0.0.0.0"
	}
	mc.BindPort = port
	mc.AdvertisePort = port
	switch {
	case cfg.Advertise != "":
		mc.AdvertiseAddr = cfg.Advertise
	case host != "" && !net.ParseIP(host).IsUnspecified():
		mc.AdvertiseAddr = host
	}
	mc.ProbeInterval = probeInterval
	mc.ProbeTimeout = probeTimeout
	mc.SuspicionMult = suspicionMult
	mc.GossipInterval = gossipInterval
	mc.PushPullInterval = pushPullInterval
	mc.TCPTimeout = tcpTimeout
	// A node restarted under its old name but on a new address may take
	// the name back once the old incarnation has been dead this long.
	mc.DeadNodeReclaimTime = deadNodeReclaim
	mc.Logger = newMemberlistLogger(c.log)
	mc.Keyring = keyring
	mc.GossipVerifyIncoming = true // with a key: refuse gossip without it
	mc.GossipVerifyOutgoing = true
	if cfg.Transport != nil {
		mc.Transport = cfg.Transport
	}
	d := (*delegate)(c)
	mc.Delegate = d
	mc.Events = d
	mc.Merge = d
	mc.Alive = d

	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("cluster: starting gossip on %s: %w", cfg.Gossip, err)
	}
	c.ml = ml
	c.gossipAddr = ml.LocalNode().Address() // before any UpdateNode can race with it
	c.log.Info("gossip started", "gossip", c.gossipAddr, "kv", cfg.KV, "vbuckets", cfg.VBuckets, "replicas", cfg.Replicas,
		"replica_partners", cfg.ReplicaPartners)
	if seeds := c.missingSeeds(); len(seeds) > 0 {
		if n, err := ml.Join(seeds); err != nil {
			if !c.keyRefused(seeds, err) {
				c.log.Warn("seeds unreachable; retrying in the background", "seeds", strings.Join(seeds, ","), "err", err)
			}
		} else {
			c.log.Info("joined cluster", "contacted", n)
		}
	}
	c.loopDone.Go(c.loop)
	return c, nil
}

// Name returns this node's name.
func (c *Cluster) Name() string { return c.cfg.Name }

// GossipAddr returns the address other nodes reach this node's gossip at.
func (c *Cluster) GossipAddr() string { return c.gossipAddr }

// Map returns the map this node holds, or nil before it has one. The map
// must not be modified. It does not block.
func (c *Cluster) Map() *vbucket.Map { return c.cur.Load() }

// WaitMap blocks until this node holds a map with a rev above after, or ctx
// ends, and returns the map it holds then (which may be nil or older).
func (c *Cluster) WaitMap(ctx context.Context, after int64) *vbucket.Map {
	for {
		c.mu.Lock()
		m, ch := c.cur.Load(), c.changed
		c.mu.Unlock()
		if m != nil && m.Rev > after {
			return m
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return c.cur.Load()
		}
	}
}

// Shutdown leaves the cluster (telling the others, so they need not wait
// for failure detection), stops gossip and the background goroutine. Safe
// to call more than once.
func (c *Cluster) Shutdown() error {
	var err error
	c.shutOnce.Do(func() {
		close(c.stop)
		c.loopDone.Wait()
		if lerr := c.ml.Leave(leaveTimeout); lerr != nil {
			c.log.Warn("leave not acknowledged", "err", lerr)
		}
		err = c.ml.Shutdown()
		c.log.Info("left cluster")
	})
	return err
}

// Kill stops gossip without a leave message, as if the process died; the
// others find out by failure detection. For tests.
func (c *Cluster) Kill() {
	c.shutOnce.Do(func() {
		close(c.stop)
		c.loopDone.Wait()
		c.ml.Shutdown()
	})
}

// offer adopts m if its rev is higher than the one held. It reports whether
// it did.
func (c *Cluster) offer(m *vbucket.Map, from string) bool {
	if err := m.Validate(); err != nil {
		c.log.Warn("ignoring invalid map", "peer", from, "err", err)
		return false
	}
	if m.NumVBuckets() != c.cfg.VBuckets {
		c.log.Warn("ignoring map with another vbucket count", "peer", from, "vbuckets", m.NumVBuckets())
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maxRev = max(c.maxRev, m.Rev)
	if cur := c.cur.Load(); cur != nil && cur.Rev >= m.Rev {
		return false
	}
	c.cur.Store(m)
	close(c.changed)
	c.changed = make(chan struct{})
	active, _ := m.Counts()
	self := m.IndexOf(c.cfg.Name)
	mine := 0
	if self >= 0 {
		mine = active[self]
	}
	c.log.Info("map adopted", "rev", m.Rev, "servers", len(m.Servers), "active_vbuckets", mine, "from", from)
	c.wake()
	return true
}

func (c *Cluster) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// loop runs until Shutdown: it keeps the advertised rev current, authors
// maps while this node coordinates, re-sends maps to lagging members and
// retries seeds.
func (c *Cluster) loop() {
	tick := time.NewTicker(loopInterval)
	defer tick.Stop()
	lastJoin := time.Now()
	for {
		select {
		case <-c.stop:
			return
		case <-tick.C:
		case <-c.kick:
		}
		if m := c.cur.Load(); m != nil && c.advRev.Load() != m.Rev ||
			c.advReady.Load() != c.readyRev.Load() || c.advLeaving.Load() != c.leaving.Load() {
			// Re-reads NodeMeta and gossips it.
			if err := c.ml.UpdateNode(tcpTimeout); err != nil {
				c.log.Debug("updating metadata", "err", err)
			}
		}
		c.coordinate()
		if time.Since(lastJoin) >= c.cfg.JoinRetry {
			lastJoin = time.Now()
			if seeds := c.missingSeeds(); len(seeds) > 0 {
				if n, err := c.ml.Join(seeds); err == nil {
					c.log.Info("joined seeds", "seeds", strings.Join(seeds, ","), "contacted", n)
				} else if !c.keyRefused(seeds, err) {
					c.log.Debug("seeds still unreachable", "seeds", strings.Join(seeds, ","), "err", err)
				}
			}
		}
	}
}

// live returns the compatible members memberlist considers alive or
// suspect, sorted by name, with this node among them.
func (c *Cluster) live() []*member {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*member
	for _, m := range c.members {
		if m.bad == "" && (m.state == memberlist.StateAlive || m.state == memberlist.StateSuspect) {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b *member) int { return strings.Compare(a.name, b.name) })
	return out
}

// coordinator returns the name of the member that authors maps.
func coordinator(live []*member) string {
	var best *member
	for _, m := range live {
		if best == nil || m.meta.Start < best.meta.Start || m.meta.Start == best.meta.Start && m.name < best.name {
			best = m
		}
	}
	if best == nil {
		return ""
	}
	return best.name
}

// coordinate publishes a new map if this node coordinates and the
// placement for the live members differs from the map it holds, and sends
// the map to members that advertise an older rev.
func (c *Cluster) coordinate() {
	live := c.live()
	if coordinator(live) != c.cfg.Name {
		return
	}
	alive := make(map[string]bool, len(live))
	var servers, leavers []vbucket.Server
	for _, m := range live {
		alive[m.name] = true
		s := vbucket.Server{Name: m.name, KV: m.meta.KV, HTTP: m.meta.HTTP}
		if m.meta.Leaving {
			leavers = append(leavers, s)
		} else {
			servers = append(servers, s)
		}
	}
	if len(servers) == 0 {
		return // everyone is leaving: keep the map as it is
	}
	target, err := c.placement(servers)
	if err != nil {
		c.log.Error("computing placement", "err", err)
		return
	}
	if cur := c.cur.Load(); cur != nil {
		// A leaving node that is still in the map stays in its server
		// list, holding nothing, until it is gone: clients told by its
		// NOT_MY_VBUCKET answers keep their connection to it while they
		// retry elsewhere, instead of dropping it under requests in flight.
		var keep []vbucket.Server
		for _, s := range leavers {
			if cur.IndexOf(s.Name) >= 0 {
				keep = append(keep, s)
			}
		}
		if len(keep) > 0 {
			t := *target
			t.Servers = append(slices.Clone(target.Servers), keep...)
			target = &t
		}
	}
	cur := c.cur.Load()
	if next := nextMap(cur, target, alive, c.ready); next != nil {
		cp := *next // target is cached: publish a copy with its own rev
		next = &cp
		c.mu.Lock()
		next.Rev = c.maxRev + 1
		c.mu.Unlock()
		if cur != nil {
			next.Rev = max(next.Rev, cur.Rev+1)
		}
		if !c.offer(next, c.cfg.Name) {
			return
		}
		c.log.Info("published map", "rev", next.Rev, "servers", len(next.Servers), "rebalancing", len(next.Forward) > 0)
		c.logRebalance(next)
		cur = next
	}
	msg := encodeMap(cur)
	now := time.Now()
	for _, m := range live {
		if m.name == c.cfg.Name || m.meta.Rev >= cur.Rev {
			continue
		}
		c.mu.Lock()
		last := c.lastSent[m.name]
		recent := last.rev == cur.Rev && now.Sub(last.at) < resendAfter
		if !recent {
			c.lastSent[m.name] = sent{cur.Rev, now}
		}
		c.mu.Unlock()
		if recent {
			continue
		}
		node := c.node(m.name)
		if node == nil {
			continue
		}
		if err := c.ml.SendReliable(node, msg); err != nil {
			c.log.Debug("sending map", "peer", m.name, "err", err)
		}
	}
}

// placement returns the target map for servers (sorted by name), computed
// once per server list: placing 1024 vbuckets takes milliseconds and the
// loop runs five times a second. The result must not be modified.
func (c *Cluster) placement(servers []vbucket.Server) (*vbucket.Map, error) {
	if c.target != nil && slices.Equal(c.target.Servers, servers) {
		return c.target, nil
	}
	m, err := vbucket.Build(0, servers, c.cfg.VBuckets, c.cfg.Replicas, c.cfg.ReplicaPartners)
	if err != nil {
		return nil, err
	}
	c.target = m
	return m, nil
}

// logRebalance says when a rebalance starts and ends, and how long it took.
func (c *Cluster) logRebalance(next *vbucket.Map) {
	moving := 0
	for vb := range next.Forward {
		if !slices.Equal(next.VBuckets[vb], next.Forward[vb]) {
			moving++
		}
	}
	switch {
	case moving > 0 && c.rebalanceStart.IsZero():
		c.rebalanceStart = time.Now()
		c.log.Info("rebalance started", "rev", next.Rev, "vbuckets_moving", moving)
	case moving > 0:
		c.log.Info("rebalance restarted for a new member set", "rev", next.Rev, "vbuckets_moving", moving)
	case !c.rebalanceStart.IsZero():
		c.log.Info("rebalance finished", "rev", next.Rev, "took", time.Since(c.rebalanceStart).Round(time.Millisecond))
		c.rebalanceStart = time.Time{}
	}
}

// ready reports whether the named server has reported ready for rev: every
// stream the map at rev asks of it is backfilled.
func (c *Cluster) ready(rev int64, name string) bool {
	if name == c.cfg.Name {
		return c.readyRev.Load() >= rev
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.members[name]
	return m != nil && m.meta.Ready >= rev
}

// ReportReady tells the coordinator that this node has backfilled every
// stream the map at rev asks of it. It does not block; the report travels
// in this node's metadata.
func (c *Cluster) ReportReady(rev int64) {
	for {
		cur := c.readyRev.Load()
		if cur >= rev || c.readyRev.CompareAndSwap(cur, rev) {
			break
		}
	}
	c.wake()
}

// Leave asks the coordinator to move this node's vbuckets to the others
// and blocks until a map in which this node holds nothing is published, or
// ctx ends. It
// returns at once, with nothing handed over, if every other member is
// leaving too (or there is none): there is no one to hand over to.
func (c *Cluster) Leave(ctx context.Context) error {
	c.leaving.Store(true)
	c.wake()
	for {
		if m := c.cur.Load(); m == nil || holdsNothing(m, m.IndexOf(c.cfg.Name)) {
			return nil
		}
		if !c.othersStaying() {
			return ErrNoOneToHandOver
		}
		wctx, cancel := context.WithTimeout(ctx, loopInterval)
		c.WaitMap(wctx, c.cur.Load().Rev)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// holdsNothing reports whether server i (-1: not in m) appears in no row
// and no forward row of m.
func holdsNothing(m *vbucket.Map, i int) bool {
	if i < 0 {
		return true
	}
	for vb := range m.VBuckets {
		if slices.Contains(m.VBuckets[vb], i) || len(m.Forward) > 0 && slices.Contains(m.Forward[vb], i) {
			return false
		}
	}
	return true
}

// othersStaying reports whether a live member other than this node is not
// leaving.
func (c *Cluster) othersStaying() bool {
	for _, m := range c.live() {
		if m.name != c.cfg.Name && !m.meta.Leaving {
			return true
		}
	}
	return false
}

// node returns a memberlist address record for a live member, or nil.
// (memberlist.Members' records are written by memberlist's goroutines
// without a lock the caller can take, so the member table's copy is used.)
func (c *Cluster) node(name string) *memberlist.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.members[name]
	if m == nil {
		return nil
	}
	return &memberlist.Node{Name: m.name, Addr: m.addr, Port: m.port}
}

// missingSeeds returns the seeds that are not the gossip address of a live
// member (nor this node's own).
func (c *Cluster) missingSeeds() []string {
	if len(c.cfg.Seeds) == 0 {
		return nil
	}
	have := map[string]bool{}
	for _, m := range c.live() {
		have[m.gossip] = true
	}
	var out []string
	for _, s := range c.cfg.Seeds {
		if !have[s] && !have[resolve(s)] {
			out = append(out, s)
		}
	}
	return out
}

// resolve turns host:port into ip:port when the host resolves, so a seed
// given by name matches memberlist's addresses.
func resolve(hostport string) string {
	a, err := net.ResolveTCPAddr("tcp", hostport)
	if err != nil {
		return hostport
	}
	return a.String()
}

// map messages: one byte of kind, then the map as JSON.
const msgMap byte = 'M'

func encodeMap(m *vbucket.Map) []byte {
	b, _ := json.Marshal(m) // plain data cannot fail
	return append([]byte{msgMap}, b...)
}

func decodeMap(b []byte) (*vbucket.Map, error) {
	if len(b) == 0 || b[0] != msgMap {
		return nil, errors.New("cluster: not a map message")
	}
	m := new(vbucket.Map)
	if err := json.Unmarshal(b[1:], m); err != nil {
		return nil, fmt.Errorf("cluster: bad map message: %w", err)
	}
	return m, nil
}
