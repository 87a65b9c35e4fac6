package vbucket

import (
	"cmp"
	"slices"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"
)

// Active owners come from github.com/buraksezer/consistent: a ring of the
// members (xxhash, ringReplication points each) with one partition per
// vbucket, owner = GetPartitionOwner. Its bounded-load pass alone leaves
// members up to 15% off their share, so balanceActive then moves
// vbuckets, deterministically, from members above the band to members
// below it. The parameters were chosen with TestPlaceMovement's figures:
// with them a join moves at most 1.3 times the ideal number of active
// vbuckets for the name sets tested. Past 16 members the points per member
// shrink (ringPoints in all, at least 20 each) to keep the ring small.
const (
	ringReplication = 500
	ringPoints      = 8192
	ringLoad        = 1.15
)

type ringMember string

func (m ringMember) String() string { return string(m) }

type xxhasher struct{}

func (xxhasher) Sum64(b []byte) uint64 { return xxhash.Sum64(b) }

// fillActive sets position 0 of every row from the ring, then balances it.
// It reports false, having changed nothing, if the ring cannot hold n
// partitions at ringLoad (fewer vbuckets than members, say); the caller
// then places position 0 like the others.
func (p *placer) fillActive(names []string) bool {
	if capacity := ceilMul(p.n/p.k, ringLoad); capacity*p.k < p.n {
		return false
	}
	members := make([]consistent.Member, p.k)
	rank := make(map[string]int, p.k)
	for i, name := range names {
		members[i] = ringMember(name)
		rank[name] = i
	}
	ring := consistent.New(members, consistent.Config{
		PartitionCount: p.n, ReplicationFactor: min(ringReplication, max(20, ringPoints/p.k)),
		Load: ringLoad, Hasher: xxhasher{},
	})
	for vb := range p.n {
		p.rows[vb][0] = rank[ring.GetPartitionOwner(vb).String()]
	}
	p.balanceActive()
	return true
}

// ceilMul is ceil(float64(a) * f), as consistent computes its bound.
func ceilMul(a int, f float64) int {
	x := float64(a) * f
	n := int(x)
	if float64(n) < x {
		n++
	}
	return n
}

// balanceActive moves position-0 vbuckets until every member holds between
// p.lo and p.hi: each member above hi gives away the vbuckets that score
// best on a member with room, and each member below lo takes the vbuckets
// it scores best on from members above lo. Ties go to the lower vbucket
// and member.
func (p *placer) balanceActive() {
	count := make([]int, p.k)
	for vb := range p.n {
		count[p.rows[vb][0]]++
	}
	type pair struct {
		score  uint64
		vb, to int
	}
	byScore := func(a, b pair) int {
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		if c := cmp.Compare(a.vb, b.vb); c != 0 {
			return c
		}
		return cmp.Compare(a.to, b.to)
	}
	for from := range p.k {
		if count[from] <= p.hi {
			continue
		}
		var pairs []pair
		for vb := range p.n {
			if p.rows[vb][0] != from {
				continue
			}
			for to := range p.k {
				if to != from {
					pairs = append(pairs, pair{p.score(vb, to), vb, to})
				}
			}
		}
		slices.SortFunc(pairs, byScore)
		for _, c := range pairs {
			if count[from] <= p.hi {
				break
			}
			if p.rows[c.vb][0] == from && count[c.to] < p.hi {
				p.rows[c.vb][0] = c.to
				count[from]--
				count[c.to]++
			}
		}
	}
	for to := range p.k {
		if count[to] >= p.lo {
			continue
		}
		var pairs []pair
		for vb := range p.n {
			if p.rows[vb][0] != to {
				pairs = append(pairs, pair{p.score(vb, to), vb, to})
			}
		}
		slices.SortFunc(pairs, byScore)
		for _, c := range pairs {
			if count[to] >= p.lo {
				break
			}
			if owner := p.rows[c.vb][0]; count[owner] > p.lo {
				p.rows[c.vb][0] = to
				count[owner]--
				count[to]++
			}
		}
	}
}
