package vbucket

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// Place computes which members hold each of n vbuckets, with replicas
// replica copies. It depends only on the set of names (not their order), n,
// replicas and partners, so every node computing it from the same member
// set gets the same answer. Rows index into members as given. Row r is
// [active, replica1, ...]; when there are fewer members than replicas+1, the
// missing replica entries are -1. No member appears twice in a row.
//
// partners bounds how many members hold the replicas of one member's
// active vbuckets: with partners > 0, a vbucket's replicas are among the
// partners members that follow its active member in name order (wrapping
// around), the member's partners; 0 allows every member, and so does
// partners >= len(members)-1. Fewer partners make a replicated write
// cheaper, since each write wakes every partner it has copies for, but put
// a failed member's load on fewer survivors. partners below replicas leaves
// no room for the replicas and is an error.
//
// Every member holds between lo and hi vbuckets in each row position, where
// [lo, hi] is n/len(members) ±10% rounded inwards, widened to floor and ceil
// of n/len(members) when that leaves no integer. Active positions always
// meet the band; a replica position can miss it only when the rows leave
// no room (e.g. with 3 members and 2 replicas the last position is forced).
//
// Errors: no members, duplicate names, n not a power of two in
// [1, MaxVBuckets], replicas outside [0, MaxReplicas], partners negative or
// in [1, replicas). Place allocates the rows, which the caller owns; it does
// not block and is safe for concurrent use.
//
// How: position 0 (the active owner) comes from consistent's ring and is
// then balanced (fillActive in ring.go), unless there are too few vbuckets
// for the ring's bounded load; the replica positions, and position 0 in
// that case, are filled as follows. Every (vbucket, member) pair has a
// score, xxhash of the member name's xxhash and the vbucket number
// (rendezvous hashing). Vbuckets prefer high-scoring members and members
// prefer high-scoring vbuckets. Each row position is filled in turn, among
// the members not already in the row (and, for a replica position with
// partners > 0, among the active member's partners):
//
//  1. Deferred acceptance under capacity hi: each vbucket proposes to its
//     best remaining member; a member keeps its hi best proposals and turns
//     the rest away to their next choice. As both sides rank by one score,
//     this is the unique stable matching, whatever the order of proposals.
//  2. While a member holds fewer than lo, it takes its best-scoring vbucket
//     from the members holding more than lo (the shortest member first).
//
// On a join the new member takes the vbuckets it scores best on, and those
// beyond its capacity go back to their next choice, the member that held
// them before. TestPlaceMovement prints the figures.
func Place(members []string, n, replicas, partners int) ([][]int, error) {
	if len(members) == 0 {
		return nil, ErrNoMembers
	}
	if err := CheckCount(n); err != nil {
		return nil, err
	}
	if replicas < 0 || replicas > MaxReplicas {
		return nil, fmt.Errorf("%w: %d is outside [0, %d]", ErrBadReplicas, replicas, MaxReplicas)
	}
	if err := CheckPartners(replicas, partners); err != nil {
		return nil, err
	}
	// Work on the names in sorted order so that the result cannot depend on
	// the order they came in; byName[i] is the index in members of the i-th.
	byName := make([]int, len(members))
	for i := range byName {
		byName[i] = i
	}
	slices.SortFunc(byName, func(a, b int) int { return strings.Compare(members[a], members[b]) })
	for i := 1; i < len(byName); i++ {
		if members[byName[i]] == members[byName[i-1]] {
			return nil, fmt.Errorf("%w: %q", ErrDuplicate, members[byName[i]])
		}
	}

	p := newPlacer(members, byName, n, replicas+1, partners)
	sorted := make([]string, len(byName))
	for i, idx := range byName {
		sorted[i] = members[idx]
	}
	for pos := 0; pos <= replicas && pos < len(members); pos++ {
		if pos == 0 && p.fillActive(sorted) {
			continue
		}
		p.fill(pos)
	}
	for _, row := range p.rows {
		for i, m := range row {
			if m >= 0 {
				row[i] = byName[m]
			}
		}
	}
	return p.rows, nil
}

// placer holds the state of one Place call. Member numbers are ranks in
// name order.
type placer struct {
	n, k     int
	partners int      // a replica is within this many ranks after the active; 0: any
	lo, hi   int      // band of vbuckets per member in each row position
	seeds    []uint64 // per member: xxhash of its name
	depth    int      // members kept in each vbucket's preference list
	prefs    []choice // per vbucket: its depth best members, best first
	rows     [][]int  // the result, member ranks; -1 where not yet filled
	count    []int    // per member: vbuckets held in the position being filled
	held     []heap   // per member: vbuckets accepted in step 1
	last     []choice // per vbucket: the last member it proposed to
}

// spareChoices is how many preferences beyond one per row position each
// vbucket keeps at hand; a vbucket turned away more often than that finds
// its next choice by scoring every member again.
const spareChoices = 4

// choice is a member and its score for some vbucket.
type choice struct {
	score uint64
	m     int // -1: none yet
}

// before reports whether a ranks above b in a vbucket's preference order:
// higher score first, then lower member rank.
func (a choice) before(b choice) bool {
	return a.score > b.score || a.score == b.score && a.m < b.m
}

func newPlacer(members []string, byName []int, n, width, partners int) *placer {
	k := len(members)
	if partners >= k-1 {
		partners = 0 // every other member is a partner
	}
	p := &placer{
		n: n, k: k, partners: partners,
		lo:    min(n/k, (9*n+10*k-1)/(10*k)),
		hi:    max((n+k-1)/k, 11*n/(10*k)),
		seeds: make([]uint64, k),
		depth: min(k, width+spareChoices),
		rows:  make([][]int, n),
		count: make([]int, k),
		held:  make([]heap, k),
		last:  make([]choice, n),
	}
	for i, idx := range byName {
		p.seeds[i] = xxhash.Sum64String(members[idx])
	}
	cells := make([]int, n*width)
	for i := range cells {
		cells[i] = -1
	}
	for vb := range p.rows {
		p.rows[vb] = cells[vb*width : (vb+1)*width : (vb+1)*width]
	}
	p.prefs = make([]choice, n*p.depth)
	for vb := range n {
		p.rank(vb)
	}
	return p
}

// score is the rendezvous score of member m for vbucket vb.
func (p *placer) score(vb, m int) uint64 {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], p.seeds[m])
	binary.LittleEndian.PutUint64(b[8:], uint64(vb))
	return xxhash.Sum64(b[:])
}

// rank fills vb's preference list with its depth best members.
func (p *placer) rank(vb int) {
	top := p.prefs[vb*p.depth : (vb+1)*p.depth]
	size := 0
	for m := range p.k {
		c := choice{p.score(vb, m), m}
		if size == len(top) && !c.before(top[size-1]) {
			continue
		}
		i := min(size, len(top)-1)
		size = min(size+1, len(top))
		for ; i > 0 && c.before(top[i-1]); i-- {
			top[i] = top[i-1]
		}
		top[i] = c
	}
}

// allowed reports whether m may take position pos of vb's row: it is not in
// the positions before, and in a replica position it is one of the active
// member's partners.
func (p *placer) allowed(vb, pos, m int) bool {
	if slices.Contains(p.rows[vb][:pos], m) {
		return false
	}
	if pos == 0 || p.partners == 0 {
		return true
	}
	d := (m - p.rows[vb][0] + p.k) % p.k // ranks after the active
	return d >= 1 && d <= p.partners
}

// next returns vb's best allowed member ranking below after (or its best of
// all if after.m is -1), and false if there is none.
func (p *placer) next(vb, pos int, after choice) (choice, bool) {
	for _, c := range p.prefs[vb*p.depth : (vb+1)*p.depth] {
		if (after.m < 0 || after.before(c)) && p.allowed(vb, pos, c.m) {
			return c, true
		}
	}
	if p.depth == p.k {
		return choice{m: -1}, false
	}
	// Past the list: score every member.
	best := choice{m: -1}
	for m := range p.k {
		if !p.allowed(vb, pos, m) {
			continue
		}
		c := choice{p.score(vb, m), m}
		if after.m >= 0 && !after.before(c) {
			continue
		}
		if best.m < 0 || c.before(best) {
			best = c
		}
	}
	return best, best.m >= 0
}

// fill assigns position pos of every row.
func (p *placer) fill(pos int) {
	// Step 1: deferred acceptance with capacity hi.
	for m := range p.held {
		p.held[m] = p.held[m][:0]
	}
	free := make([]int, 0, p.n)
	for vb := p.n - 1; vb >= 0; vb-- {
		free = append(free, vb)
		p.last[vb] = choice{m: -1}
	}
	var unplaced []int
	for len(free) > 0 {
		vb := free[len(free)-1]
		free = free[:len(free)-1]
		c, ok := p.next(vb, pos, p.last[vb])
		if !ok {
			unplaced = append(unplaced, vb)
			continue
		}
		p.last[vb] = c
		h := &p.held[c.m]
		h.push(entry{c.score, vb})
		if len(*h) > p.hi {
			free = append(free, h.pop().vb)
		}
	}
	for m := range p.held {
		p.count[m] = len(p.held[m])
		for _, e := range p.held[m] {
			p.rows[e.vb][pos] = m
		}
	}
	// A vbucket every allowed member turned away (only possible in a
	// replica position, where the row excludes some members) goes over
	// capacity to the allowed member holding the fewest.
	slices.Sort(unplaced)
	for _, vb := range unplaced {
		best := -1
		for m := range p.k {
			if p.allowed(vb, pos, m) && (best < 0 || p.count[m] < p.count[best]) {
				best = m
			}
		}
		p.rows[vb][pos] = best
		p.count[best]++
	}

	// Step 2: raise members below lo.
	stuck := make([]bool, p.k)
	for {
		short := -1
		for m := range p.k {
			if !stuck[m] && p.count[m] < p.lo && (short < 0 || p.count[m] < p.count[short]) {
				short = m
			}
		}
		if short < 0 {
			return
		}
		vbTaken, taken := -1, uint64(0)
		for vb, row := range p.rows {
			if h := row[pos]; h < 0 || p.count[h] <= p.lo || !p.allowed(vb, pos, short) {
				continue
			}
			// Ties go to the lower vbucket, the one found first.
			if sc := p.score(vb, short); vbTaken < 0 || sc > taken {
				vbTaken, taken = vb, sc
			}
		}
		if vbTaken < 0 {
			stuck[short] = true
			continue
		}
		p.count[p.rows[vbTaken][pos]]--
		p.rows[vbTaken][pos] = short
		p.count[short]++
	}
}

// entry is a vbucket a member holds, with the member's score for it.
type entry struct {
	score uint64
	vb    int
}

// worse reports whether the member prefers b to a: lower score, then the
// higher vbucket, is worse.
func (a entry) worse(b entry) bool {
	return a.score < b.score || a.score == b.score && a.vb > b.vb
}

// heap is a min-heap of entries, the worst on top.
type heap []entry

func (h *heap) push(e entry) {
	*h = append(*h, e)
	s := *h
	for i := len(s) - 1; i > 0; {
		parent := (i - 1) / 2
		if !s[i].worse(s[parent]) {
			break
		}
		s[i], s[parent] = s[parent], s[i]
		i = parent
	}
}

func (h *heap) pop() entry {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s = s[:last]
	for i := 0; ; {
		w, l, r := i, 2*i+1, 2*i+2
		if l < len(s) && s[l].worse(s[w]) {
			w = l
		}
		if r < len(s) && s[r].worse(s[w]) {
			w = r
		}
		if w == i {
			break
		}
		s[i], s[w] = s[w], s[i]
		i = w
	}
	*h = s
	return top
}
