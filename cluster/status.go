package cluster

import (
	"slices"
	"strings"

	"vbcache/vbucket"
)

// Status is a snapshot of this node's view of the cluster, as /cluster
// shows it.
type Status struct {
	Node            string         `json:"node"`
	Rev             int64          `json:"rev"`
	VBuckets        int            `json:"vbuckets"`
	Replicas        int            `json:"replicas"`
	ReplicaPartners int            `json:"replica_partners"` // 0: every other member
	Coordinator     string         `json:"coordinator"`
	Members         []MemberStatus `json:"members"`
	Map             *vbucket.Map   `json:"map"`
}

// MemberStatus is one member as this node sees it.
type MemberStatus struct {
	Name            string `json:"name"`
	State           string `json:"state"` // alive, suspect, dead, left, or incompatible
	KV              string `json:"kv"`
	HTTP            string `json:"http,omitempty"`
	Gossip          string `json:"gossip"`
	Rev             int64  `json:"rev"`   // rev of the map the member advertises
	Ready           int64  `json:"ready"` // highest rev whose streams the member has backfilled
	ActiveVBuckets  int    `json:"active_vbuckets"`
	ReplicaVBuckets int    `json:"replica_vbuckets"`
	Reason          string `json:"reason,omitempty"` // why an incompatible member is refused
}

// Status returns a snapshot of the member table and the map. It does not
// block beyond the Cluster's mutex.
func (c *Cluster) Status() Status {
	m := c.cur.Load()
	st := Status{
		Node: c.cfg.Name, VBuckets: c.cfg.VBuckets, Replicas: c.cfg.Replicas,
		ReplicaPartners: c.cfg.ReplicaPartners,
		Coordinator:     coordinator(c.live()), Map: m,
	}
	var active, replica []int
	if m != nil {
		st.Rev = m.Rev
		active, replica = m.Counts()
	}
	c.mu.Lock()
	for _, mb := range c.members {
		ms := MemberStatus{
			Name: mb.name, State: stateName(mb.state), KV: mb.meta.KV, HTTP: mb.meta.HTTP,
			Gossip: mb.gossip, Rev: mb.meta.Rev, Ready: mb.meta.Ready, Reason: mb.bad,
		}
		if mb.bad != "" {
			ms.State = "incompatible"
		}
		if m != nil {
			if i := m.IndexOf(mb.name); i >= 0 {
				ms.ActiveVBuckets, ms.ReplicaVBuckets = active[i], replica[i]
			}
		}
		st.Members = append(st.Members, ms)
	}
	c.mu.Unlock()
	slices.SortFunc(st.Members, func(a, b MemberStatus) int { return strings.Compare(a.Name, b.Name) })
	return st
}

// Serving reports whether this node holds a map that includes it.
func (c *Cluster) Serving() bool {
	m := c.cur.Load()
	return m != nil && m.IndexOf(c.cfg.Name) >= 0
}
