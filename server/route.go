package server

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"

	"vbcache/protocol"
	"vbcache/vbucket"
)

// Cluster is what the server needs from the membership layer
// (cluster.Cluster implements it). All methods must be safe for concurrent
// use; Map must not block.
type Cluster interface {
	// Name is this node's name in the map's server list.
	Name() string
	// Map returns the current map, or nil before there is one. The server
	// never modifies it.
	Map() *vbucket.Map
	// WaitMap blocks until the map's rev is above after or ctx ends, and
	// returns the map then held.
	WaitMap(ctx context.Context, after int64) *vbucket.Map
}

// routes is the server's routing view of one map: who owns each vbucket
// and the config JSON clients get, rendered once per map.
type routes struct {
	m      *vbucket.Map
	n      int    // vbuckets
	self   int    // this node's index in m.Servers, or -1
	config []byte // m.ClientConfig(self)
	single bool   // single-node mode: every vbucket is served here
	// targets[vb] are the other servers that vb's streams go to, for the
	// vbuckets this node holds active: its replicas and forward row.
	targets [][]int
}

// owner returns the index of vb's active server, or -1.
func (r *routes) owner(vb uint16) int {
	if int(vb) >= r.n {
		return -1
	}
	return r.m.Active(vb)
}

// local reports whether this node serves vb.
func (r *routes) local(vb uint16) bool {
	return r.single || r.self >= 0 && r.owner(vb) == r.self
}

// vbState is the GET_VBUCKET state of vb on this node.
func (r *routes) vbState(vb uint16) uint32 {
	const active, replica, dead = 1, 2, 4
	switch {
	case r.local(vb):
		return active
	case int(vb) < r.n && r.self >= 0:
		for _, s := range r.m.VBuckets[vb][1:] {
			if s == r.self {
				return replica
			}
		}
	}
	return dead
}

// kvAddrs returns the memcached addresses of the map's servers.
func (r *routes) kvAddrs() map[string]bool {
	addrs := make(map[string]bool, len(r.m.Servers))
	for _, s := range r.m.Servers {
		addrs[s.KV] = true
	}
	return addrs
}

// router caches the routes of the cluster's current map, or in single-node
// mode the one-node map.
type router struct {
	cluster Cluster // nil in single-node mode
	n       int     // vbuckets in single-node mode
	cur     atomic.Pointer[routes]
	mu      sync.Mutex // serialises rebuilding cur
}

// single returns the routes of a single node holding all vbuckets, whose
// config names it as $HOST:kvPort (clients substitute the address they
// connected to for $HOST).
func (r *router) single(kvPort string) *routes {
	m, err := vbucket.Build(1, []vbucket.Server{{Name: "self", KV: "$HOST:" + kvPort}}, r.n, 0, 0)
	if err != nil {
		panic(err) // n was validated by New
	}
	return &routes{m: m, n: r.n, self: 0, config: m.ClientConfig(0), single: true}
}

// setPort names the single node's port in its config once Serve knows it.
func (r *router) setPort(kvPort string) {
	if r.cluster == nil {
		r.cur.Store(r.single(kvPort))
	}
}

// get returns the routes of the current map, or nil if the cluster has no
// map yet.
func (r *router) get() *routes {
	if r.cluster == nil {
		if rt := r.cur.Load(); rt != nil {
			return rt
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if rt := r.cur.Load(); rt != nil {
			return rt
		}
		rt := r.single("11211")
		r.cur.Store(rt)
		return rt
	}
	m := r.cluster.Map()
	if m == nil {
		return nil
	}
	if rt := r.cur.Load(); rt != nil && rt.m == m {
		return rt
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if rt := r.cur.Load(); rt != nil && rt.m.Rev >= m.Rev {
		return rt
	}
	self := m.IndexOf(r.cluster.Name())
	rt := &routes{m: m, n: m.NumVBuckets(), self: self, config: m.ClientConfig(self), targets: streamTargets(m, self)}
	r.cur.Store(rt)
	return rt
}

// keyed reports whether op addresses one key, and so one vbucket.
func keyed(op protocol.Opcode) bool {
	switch op.Loud() {
	case protocol.OpGet, protocol.OpGetK, protocol.OpSet, protocol.OpAdd, protocol.OpReplace,
		protocol.OpDelete, protocol.OpIncrement, protocol.OpDecrement, protocol.OpAppend,
		protocol.OpPrepend, protocol.OpTouch, protocol.OpGAT, protocol.OpGATK:
		return true
	}
	return false
}

// ClientConfig returns the cluster config JSON this node gives clients
// (GET_CLUSTER_CONFIG, NOT_MY_VBUCKET), or nil before there is a map. The
// caller must not modify it.
func (s *Server) ClientConfig() []byte {
	if rt := s.router.get(); rt != nil {
		return rt.config
	}
	return nil
}

// Map returns the map this node routes by, or nil before there is one.
func (s *Server) Map() *vbucket.Map {
	if rt := s.router.get(); rt != nil {
		return rt.m
	}
	return nil
}

// streamTargets returns, for each vbucket server self holds active, the
// other servers of its row and forward row.
func streamTargets(m *vbucket.Map, self int) [][]int {
	targets := make([][]int, m.NumVBuckets())
	if self < 0 {
		return targets
	}
	for vb, row := range m.VBuckets {
		if row[0] != self {
			continue
		}
		add := func(s int) {
			if s >= 0 && s != self && !slices.Contains(targets[vb], s) {
				targets[vb] = append(targets[vb], s)
			}
		}
		for _, s := range row[1:] {
			add(s)
		}
		if len(m.Forward) > 0 {
			for _, s := range m.Forward[vb] {
				add(s)
			}
		}
	}
	return targets
}

// Progress describes the current rebalance from this node's view.
type Progress struct {
	Rev             int64  `json:"rev"`              // map rev
	VBucketsActive  int    `json:"vbuckets_active"`  // held active here
	VBucketsReplica int    `json:"vbuckets_replica"` // held as a replica here
	VBucketsMoving  int    `json:"vbuckets_moving"`  // cluster-wide: forward row differs from row
	BackfillItems   uint64 `json:"items_sent"`       // items this node has sent in backfills, ever
	BackfillBytes   uint64 `json:"bytes_sent"`       // bytes of those
	ReplicationErrs uint64 `json:"replication_errors"`
	// CopyHolds counts the writes of copies held for clients expected back
	// (Config.CopyHold), and CopyHoldsExpired the holds that ran out with
	// some still expected.
	CopyHolds        uint64 `json:"copy_holds"`
	CopyHoldsExpired uint64 `json:"copy_holds_expired"`
	// Streams are those the map asks this node to send (one per vbucket
	// it holds active and other server of that vbucket's row or forward
	// row); StreamsBackfilled of them have been sent everything the
	// vbucket held. The node reports ready for the map once all have.
	Streams           int `json:"streams"`
	StreamsBackfilled int `json:"streams_backfilled"`
	// Peers is the replication backlog towards each peer.
	Peers []PeerLag `json:"peers"`
}

// Progress returns rebalance and replication figures for /cluster, STAT
// and /metrics.
func (s *Server) Progress() Progress {
	p := Progress{
		BackfillItems: s.stats.backfillItems.Load(), BackfillBytes: s.stats.backfillBytes.Load(),
		ReplicationErrs: s.stats.replErrors.Load(), Peers: s.peers.lag(),
	}
	if e := s.peers.expected; e != nil {
		p.CopyHolds, p.CopyHoldsExpired = e.holds.Load(), e.expired.Load()
	}
	if rt := s.router.get(); rt != nil {
		if s.repl != nil {
			p.Streams, p.StreamsBackfilled = s.repl.streams(rt)
		}
		p.Rev = rt.m.Rev
		if rt.self >= 0 {
			active, replica := rt.m.Counts()
			p.VBucketsActive, p.VBucketsReplica = active[rt.self], replica[rt.self]
		}
		if len(rt.m.Forward) > 0 {
			for vb, row := range rt.m.VBuckets {
				if !slices.Equal(row, rt.m.Forward[vb]) {
					p.VBucketsMoving++
				}
			}
		}
	}
	return p
}
