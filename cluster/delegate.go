package cluster

import (
	"fmt"
	"slices"

	"github.com/hashicorp/memberlist"
)

// delegate is the Cluster as memberlist sees it: its Delegate,
// EventDelegate, MergeDelegate and AliveDelegate. memberlist calls these
// from its own goroutines; none of them blocks beyond the Cluster's mutex.
type delegate Cluster

func (d *delegate) c() *Cluster { return (*Cluster)(d) }

// NodeMeta advertises this node's addresses, start time, vbucket count and
// the rev of the map it holds.
func (d *delegate) NodeMeta(limit int) []byte {
	c := d.c()
	m := meta{KV: c.cfg.KV, HTTP: c.cfg.HTTP, Start: c.start, VBuckets: c.cfg.VBuckets,
		Ready: c.readyRev.Load(), Leaving: c.leaving.Load(), Peer: c.cfg.PeerCheck}
	if cur := c.cur.Load(); cur != nil {
		m.Rev = cur.Rev
	}
	c.advRev.Store(m.Rev)
	c.advReady.Store(m.Ready)
	c.advLeaving.Store(m.Leaving)
	b := m.encode()
	if len(b) > limit {
		c.log.Error("node metadata too large for memberlist", "bytes", len(b), "limit", limit)
		return nil
	}
	return b
}

// NotifyMsg receives maps sent with SendReliable.
func (d *delegate) NotifyMsg(b []byte) {
	m, err := decodeMap(b)
	if err != nil {
		d.c().log.Warn("ignoring message", "err", err)
		return
	}
	d.c().offer(m, "message")
}

// GetBroadcasts has nothing to piggyback: maps do not fit in gossip
// packets and travel by SendReliable and push/pull instead.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// LocalState sends the map this node holds in push/pull exchanges.
func (d *delegate) LocalState(join bool) []byte {
	if m := d.c().cur.Load(); m != nil {
		return encodeMap(m)
	}
	return nil
}

// MergeRemoteState adopts a newer map received in a push/pull exchange.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	if len(buf) == 0 {
		return
	}
	m, err := decodeMap(buf)
	if err != nil {
		d.c().log.Warn("ignoring remote state", "err", err)
		return
	}
	d.c().offer(m, "push/pull")
}

// NotifyJoin, NotifyLeave and NotifyUpdate keep the member table.
func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.c().record(n, "joined") }
func (d *delegate) NotifyLeave(n *memberlist.Node)  { d.c().record(n, "left") }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.c().record(n, "") }

// NotifyMerge refuses to merge with a cluster (or a joining node) whose
// vbucket count differs from this node's: both sides of such a join log why
// and the join fails.
func (d *delegate) NotifyMerge(peers []*memberlist.Node) error {
	for _, n := range peers {
		if why := d.c().incompatible(n); why != "" {
			d.c().log.Error("refusing to merge with node", "peer", n.Name, "addr", n.Address(), "reason", why)
			return fmt.Errorf("node %s: %s", n.Name, why)
		}
	}
	return nil
}

// NotifyAlive ignores gossip about incompatible nodes.
func (d *delegate) NotifyAlive(n *memberlist.Node) error {
	if why := d.c().incompatible(n); why != "" {
		return fmt.Errorf("node %s: %s", n.Name, why)
	}
	return nil
}

// incompatible says why node n cannot be in this cluster, or "".
func (c *Cluster) incompatible(n *memberlist.Node) string {
	m, err := decodeMeta(n)
	if err != nil {
		return err.Error()
	}
	return c.mismatch(m)
}

// mismatch says why a node advertising m cannot be in this cluster, or "".
func (c *Cluster) mismatch(m meta) string {
	switch {
	case m.VBuckets != c.cfg.VBuckets:
		return fmt.Sprintf("it has -vbuckets %d, this node %d; a cluster has one vbucket count for life", m.VBuckets, c.cfg.VBuckets)
	case m.Peer == "" && c.cfg.PeerCheck != "":
		return "it presents no peer credentials and this node requires them (-auth-file, -peer-user)"
	case m.Peer != "" && c.cfg.PeerCheck == "":
		return "it presents peer credentials and this node has none (-auth-file, -peer-user)"
	case m.Peer != c.cfg.PeerCheck:
		return "its peer credentials differ from this node's (-peer-user and its password in -auth-file must be the same on every node)"
	}
	return ""
}

// record updates the member table from a memberlist event and wakes the
// loop.
func (c *Cluster) record(n *memberlist.Node, event string) {
	m, err := decodeMeta(n)
	bad := ""
	if err != nil {
		bad = err.Error()
	} else {
		bad = c.mismatch(m)
	}
	state := n.State
	c.mu.Lock()
	if event == "left" && state != memberlist.StateLeft {
		// memberlist reports departures without updating Node.State: a
		// member that announced it was leaving left; any other died.
		state = memberlist.StateDead
		if old := c.members[n.Name]; old != nil && old.meta.Leaving {
			state = memberlist.StateLeft
		}
	}
	c.members[n.Name] = &member{name: n.Name, gossip: n.Address(), addr: slices.Clone(n.Addr), port: n.Port, state: state, meta: m, bad: bad}
	c.maxRev = max(c.maxRev, m.Rev)
	c.mu.Unlock()
	if event != "" && n.Name != c.cfg.Name {
		c.log.Info("member "+event, "peer", n.Name, "addr", n.Address())
	}
	c.wake()
}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	}
	return "unknown"
}
