package cluster

import (
	"slices"

	"vbcache/vbucket"
)

// How the coordinator gets from the map it holds (cur) to the placement the
// live members call for (target). Each step is one published map:
//
//  1. Failover. If servers of cur are gone, publish cur without them at
//     once: a vbucket whose active is gone gets its first surviving replica
//     promoted (its data is there), gone replicas become -1. Only if no copy
//     survives does the vbucket go, empty, to its target owner.
//  2. Rebalance start. If cur's placement differs from target, publish cur
//     with Forward = target (over the union of both server lists). Active
//     owners then stream each vbucket to the members of its forward row
//     that lack it, and report ready once every stream is backfilled.
//  3. Takeover. When every server of that map has reported ready for its
//     rev, publish target itself.
//
// A membership change during a rebalance starts again from step 1 or 2.

// nextMap returns the map the coordinator should publish after cur, given
// target (the placement over the live members that are not leaving), the
// live members (leaving ones included: they hand their vbuckets over before
// they go) and which servers reported ready for a rev; or nil if cur
// stands. The result's Rev is left 0.
func nextMap(cur, target *vbucket.Map, live map[string]bool, ready func(rev int64, name string) bool) *vbucket.Map {
	if cur == nil {
		return target
	}
	if slices.ContainsFunc(cur.Servers, func(s vbucket.Server) bool { return !live[s.Name] }) {
		return failover(cur, target, live)
	}
	if samePlacement(cur, target) {
		if len(cur.Forward) > 0 || !cur.SamePlacement(target) {
			return target // a finished rebalance, or only addresses changed
		}
		return nil
	}
	if len(cur.Forward) == 0 || !sameRows(cur, cur.Forward, target, target.VBuckets) {
		return withForward(cur, target)
	}
	for _, s := range cur.Servers {
		if !ready(cur.Rev, s.Name) {
			return nil
		}
	}
	return target
}

// samePlacement reports whether a and b put every vbucket on the same
// servers by name (forward rows aside).
func samePlacement(a, b *vbucket.Map) bool {
	return sameRows(a, a.VBuckets, b, b.VBuckets)
}

// sameRows reports whether rows ra of map a and rows rb of map b name the
// same servers in the same order.
func sameRows(a *vbucket.Map, ra [][]int, b *vbucket.Map, rb [][]int) bool {
	if len(ra) != len(rb) {
		return false
	}
	for vb := range ra {
		if len(ra[vb]) != len(rb[vb]) {
			return false
		}
		for i := range ra[vb] {
			if name(a, ra[vb][i]) != name(b, rb[vb][i]) {
				return false
			}
		}
	}
	return true
}

func name(m *vbucket.Map, i int) string {
	if i < 0 {
		return ""
	}
	return m.Servers[i].Name
}

// failover returns cur without the servers not in live, promoting replicas
// of vbuckets whose active is gone.
func failover(cur, target *vbucket.Map, live map[string]bool) *vbucket.Map {
	next := &vbucket.Map{Replicas: cur.Replicas}
	remap := make([]int, len(cur.Servers))
	for i, s := range cur.Servers {
		remap[i] = -1
		if live[s.Name] {
			remap[i] = len(next.Servers)
			next.Servers = append(next.Servers, s)
		}
	}
	next.VBuckets = make([][]int, len(cur.VBuckets))
	for vb, row := range cur.VBuckets {
		var kept []int
		for _, i := range row {
			if i >= 0 && remap[i] >= 0 {
				kept = append(kept, remap[i])
			}
		}
		if len(kept) == 0 {
			// Every copy is gone: the vbucket restarts empty on its
			// target owner.
			owner := target.Servers[target.VBuckets[vb][0]].Name
			kept = []int{slices.IndexFunc(next.Servers, func(s vbucket.Server) bool { return s.Name == owner })}
			if kept[0] < 0 {
				next.Servers = append(next.Servers, target.Servers[target.VBuckets[vb][0]])
				kept[0] = len(next.Servers) - 1
			}
		}
		for len(kept) < len(row) {
			kept = append(kept, -1)
		}
		next.VBuckets[vb] = kept
	}
	return next
}

// withForward returns cur with Forward set to target's placement, over
// cur's servers followed by target's new ones.
func withForward(cur, target *vbucket.Map) *vbucket.Map {
	next := &vbucket.Map{Replicas: cur.Replicas, Servers: slices.Clone(cur.Servers), VBuckets: cur.VBuckets}
	index := func(s vbucket.Server) int {
		for i := range next.Servers {
			if next.Servers[i].Name == s.Name {
				return i
			}
		}
		next.Servers = append(next.Servers, s)
		return len(next.Servers) - 1
	}
	next.Forward = make([][]int, len(target.VBuckets))
	for vb, row := range target.VBuckets {
		f := make([]int, len(row))
		for i, s := range row {
			f[i] = -1
			if s >= 0 {
				f[i] = index(target.Servers[s])
			}
		}
		next.Forward[vb] = f
	}
	if cur.Replicas != target.Replicas {
		next.Forward = nil // shapes differ; cannot be expressed as a forward map
		return target
	}
	return next
}
