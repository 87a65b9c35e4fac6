package vbucket

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// names returns k member names made from format, as cluster nodes are named.
func names(format string, k int) []string {
	s := make([]string, k)
	for i := range s {
		s[i] = fmt.Sprintf(format, i)
	}
	return s
}

func mustPlace(t testing.TB, members []string, n, replicas int) [][]int {
	t.Helper()
	return mustPlacePartners(t, members, n, replicas, 0)
}

// checkRows checks the shape Place promises: Replicas+1 entries a row, an
// active in every row, no member twice in a row, and -1 exactly where there
// are not enough members.
func checkRows(t *testing.T, rows [][]int, k, n, replicas int) {
	t.Helper()
	if len(rows) != n {
		t.Fatalf("%d rows, want %d", len(rows), n)
	}
	for vb, row := range rows {
		if len(row) != replicas+1 {
			t.Fatalf("row %d = %v, want %d entries", vb, row, replicas+1)
		}
		for i, m := range row {
			if want := i < k; (m >= 0) != want || m >= k {
				t.Fatalf("row %d = %v with %d members", vb, row, k)
			}
			if m >= 0 && slices.Contains(row[:i], m) {
				t.Fatalf("row %d = %v holds member %d twice", vb, row, m)
			}
		}
	}
}

// spread returns the least and most of counts and the largest deviation
// from fair as a fraction of fair.
func spread(counts []int, fair float64) (lo, hi int, dev float64) {
	lo, hi = slices.Min(counts), slices.Max(counts)
	return lo, hi, max(fair-float64(lo), float64(hi)-fair) / fair
}

// positionCounts returns how many rows each of k members holds at row
// position pos.
func positionCounts(rows [][]int, k, pos int) []int {
	c := make([]int, k)
	for _, row := range rows {
		if m := row[pos]; m >= 0 {
			c[m]++
		}
	}
	return c
}

func TestPlaceBalance(t *testing.T) {
	const n = DefaultVBuckets
	for _, replicas := range []int{1, 2} {
		for k := 2; k <= 16; k++ {
			t.Run(fmt.Sprintf("members=%d/replicas=%d", k, replicas), func(t *testing.T) {
				rows := mustPlace(t, names("node%d", k), n, replicas)
				checkRows(t, rows, k, n, replicas)
				fair := float64(n) / float64(k)
				lo, hi, dev := spread(positionCounts(rows, k, 0), fair)
				line := fmt.Sprintf("%2d members, fair %5.1f: active %d..%d (%4.1f%%)", k, fair, lo, hi, 100*dev)
				if dev > 0.10 {
					t.Errorf("active counts %d..%d, more than 10%% from %.1f", lo, hi, fair)
				}
				for pos := 1; pos <= replicas && pos < k; pos++ {
					lo, hi, dev := spread(positionCounts(rows, k, pos), fair)
					line += fmt.Sprintf("  replica%d %d..%d (%4.1f%%)", pos, lo, hi, 100*dev)
				}
				t.Log(line)
			})
		}
	}
}

// moves compares the rows placed over members[:k] with those over
// members[:k+1] (so member indices agree): how many vbuckets changed active
// owner, how many got an active that held no copy before, and how many
// replica copies are on a member that held no copy before.
func moves(before, after [][]int) (owner, activeCopies, replicaCopies int) {
	for vb := range before {
		if after[vb][0] != before[vb][0] {
			owner++
			if !slices.Contains(before[vb], after[vb][0]) {
				activeCopies++
			}
		}
		for _, m := range after[vb][1:] {
			if m >= 0 && !slices.Contains(before[vb], m) {
				replicaCopies++
			}
		}
	}
	return owner, activeCopies, replicaCopies
}

func TestPlaceMovement(t *testing.T) {
	const n = DefaultVBuckets
	for _, format := range []string{"node%d", "10.0.0.%d:7946"} {
		members := names(format, 16)
		prev := mustPlace(t, members[:1], n, 1)
		for k := 1; k < 16; k++ {
			t.Run(fmt.Sprintf("names=%s/members=%d->%d", format, k, k+1), func(t *testing.T) {
				next := mustPlace(t, members[:k+1], n, 1)
				owner, activeCopies, replicaCopies := moves(prev, next)
				fair := float64(n) / float64(k+1)
				t.Logf("%2d->%2d members, fair %5.1f: active owner changed %3d (%.2f x fair), %3d of them to a member without a copy; new replica copies %3d (%.2f x fair)",
					k, k+1, fair, owner, float64(owner)/fair, activeCopies, replicaCopies, float64(replicaCopies)/fair)
				if float64(owner) > 1.3*fair {
					t.Errorf("%d active owners changed, more than 1.3 x %.1f", owner, fair)
				}
				prev = next
			})
		}
	}
}

func TestPlaceDeterministic(t *testing.T) {
	members := names("node%d", 7)
	want := mustPlace(t, members, 256, 2)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		shuffled := slices.Clone(members)
		rng.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
		got := mustPlace(t, shuffled, 256, 2)
		for vb := range want {
			for pos := range want[vb] {
				if w, g := members[want[vb][pos]], shuffled[got[vb][pos]]; w != g {
					t.Fatalf("permutation %d %v: vbucket %d position %d is %s, want %s", i, shuffled, vb, pos, g, w)
				}
			}
		}
	}
}

func TestPlaceShapes(t *testing.T) {
	for _, tc := range []struct{ k, n, replicas int }{
		{1, 1, 0}, {1, 1024, 1}, {1, 64, 3}, {2, 1, 1}, {2, 64, 3}, {3, 1024, 2},
		{5, 2, 1}, {100, 64, 1}, {1024, 1024, 1}, {40, 32768, 3}, {3, 8, 3},
	} {
		t.Run(fmt.Sprintf("members=%d/vbuckets=%d/replicas=%d", tc.k, tc.n, tc.replicas), func(t *testing.T) {
			rows := mustPlace(t, names("m%d", tc.k), tc.n, tc.replicas)
			checkRows(t, rows, tc.k, tc.n, tc.replicas)
			// The band Place promises: ±10% of fair, widened to the floor
			// and ceiling of fair when it holds no integer.
			fair := float64(tc.n) / float64(tc.k)
			lo := min(math.Floor(fair), math.Ceil(0.9*fair))
			hi := max(math.Ceil(fair), math.Floor(1.1*fair))
			counts := positionCounts(rows, tc.k, 0)
			if got := float64(slices.Min(counts)); got < lo {
				t.Errorf("a member holds %v active vbuckets, below %v", got, lo)
			}
			if got := float64(slices.Max(counts)); got > hi {
				t.Errorf("a member holds %v active vbuckets, above %v", got, hi)
			}
		})
	}
}

func TestPlaceErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		members  []string
		n        int
		replicas int
		partners int
		want     error
	}{
		{"no members", nil, 1024, 1, 0, ErrNoMembers},
		{"duplicate", []string{"a", "b", "a"}, 1024, 1, 0, ErrDuplicate},
		{"zero vbuckets", []string{"a"}, 0, 1, 0, ErrBadCount},
		{"not a power of two", []string{"a"}, 1000, 1, 0, ErrBadCount},
		{"too many vbuckets", []string{"a"}, 2 * MaxVBuckets, 1, 0, ErrBadCount},
		{"negative replicas", []string{"a"}, 1024, -1, 0, ErrBadReplicas},
		{"too many replicas", []string{"a"}, 1024, MaxReplicas + 1, 0, ErrBadReplicas},
		{"negative partners", []string{"a", "b"}, 1024, 1, -1, ErrBadReplicas},
		{"fewer partners than replicas", []string{"a", "b", "c", "d"}, 1024, 2, 1, ErrBadReplicas},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := Place(tc.members, tc.n, tc.replicas, tc.partners)
			if !errors.Is(err, tc.want) || rows != nil {
				t.Fatalf("Place = %d rows, %v; want %v", len(rows), err, tc.want)
			}
		})
	}
}

func BenchmarkPlace(b *testing.B) {
	for _, bc := range []struct{ k, n int }{{3, 1024}, {16, 1024}, {64, 1024}, {16, 32768}, {128, 32768}} {
		b.Run(fmt.Sprintf("members=%d/vbuckets=%d", bc.k, bc.n), func(b *testing.B) {
			members := names("node%d", bc.k)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Place(members, bc.n, 1, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestPlacePartners(t *testing.T) {
	const n = DefaultVBuckets
	for _, tc := range []struct{ replicas, partners int }{{1, 1}, {1, 2}, {2, 2}, {1, 3}, {2, 3}} {
		for k := 2; k <= 12; k++ {
			t.Run(fmt.Sprintf("members=%d/replicas=%d/partners=%d", k, tc.replicas, tc.partners), func(t *testing.T) {
				members := names("node%d", k)
				rows := mustPlacePartners(t, members, n, tc.replicas, tc.partners)
				checkRows(t, rows, k, n, tc.replicas)
				// Members are named in rank order here (node10 sorts before
				// node2, so rank by name).
				rank := make([]int, k)
				sorted := slices.Clone(members)
				slices.Sort(sorted)
				for i, name := range members {
					rank[i] = slices.Index(sorted, name)
				}
				held := make([]map[int]bool, k) // per member: the members holding its replicas
				for i := range held {
					held[i] = map[int]bool{}
				}
				for vb, row := range rows {
					for _, m := range row[1:] {
						if m < 0 {
							continue
						}
						held[row[0]][m] = true
						if d := (rank[m] - rank[row[0]] + k) % k; tc.partners < k-1 && d > tc.partners {
							t.Fatalf("vbucket %d: replica %s is %d after active %s, more than %d partners",
								vb, members[m], d, members[row[0]], tc.partners)
						}
					}
				}
				// Actives keep their band. A replica position can be forced
				// (with 2 replicas and 2 partners, the second replica is the
				// partner the first is not), so it is each member's copies
				// over all replica positions, what it stores and applies,
				// that must be even.
				fair := float64(n) / float64(k)
				lo, hi, dev := spread(positionCounts(rows, k, 0), fair)
				line := fmt.Sprintf("%2d members, fair %5.1f: active %d..%d (%4.1f%%)", k, fair, lo, hi, 100*dev)
				if dev > 0.10 {
					t.Errorf("active counts %d..%d, more than 10%% from %.1f", lo, hi, fair)
				}
				copies := make([]int, k)
				for pos := 1; pos <= tc.replicas && pos < k; pos++ {
					for m, c := range positionCounts(rows, k, pos) {
						copies[m] += c
					}
				}
				want := fair * float64(min(tc.replicas, k-1))
				lo, hi, dev = spread(copies, want)
				line += fmt.Sprintf("  replica copies %d..%d (%4.1f%%)", lo, hi, 100*dev)
				if dev > 0.10 {
					t.Errorf("replica copies per member %d..%d, more than 10%% from %.1f", lo, hi, want)
				}
				for m, h := range held {
					if want := min(tc.partners, k-1); len(h) != want {
						t.Errorf("%s's replicas are on %d members, want %d", members[m], len(h), want)
					}
				}
				t.Log(line)
			})
		}
	}
}

// TestPlacePartnersAll: partners that cover every other member change
// nothing.
func TestPlacePartnersAll(t *testing.T) {
	for k := 2; k <= 5; k++ {
		members := names("node%d", k)
		want := mustPlace(t, members, 256, 1)
		for partners := k - 1; partners <= k+1; partners++ {
			if got := mustPlacePartners(t, members, 256, 1, partners); !slices.EqualFunc(got, want, slices.Equal) {
				t.Errorf("%d members, %d partners: placement differs from partners 0", k, partners)
			}
		}
	}
}

func mustPlacePartners(t testing.TB, members []string, n, replicas, partners int) [][]int {
	t.Helper()
	rows, err := Place(members, n, replicas, partners)
	if err != nil {
		t.Fatalf("Place(%d members, %d, %d, %d): %v", len(members), n, replicas, partners, err)
	}
	return rows
}

// TestPlacePartnersMovement: on a join, actives move as without partners;
// replicas move about twice as much, since the new member changes the
// partners of the members before it.
func TestPlacePartnersMovement(t *testing.T) {
	const n = DefaultVBuckets
	for _, partners := range []int{1, 2} {
		members := names("node%d", 12)
		prev := mustPlacePartners(t, members[:2], n, 1, partners)
		for k := 2; k < 12; k++ {
			next := mustPlacePartners(t, members[:k+1], n, 1, partners)
			owner, _, replicaCopies := moves(prev, next)
			fair := float64(n) / float64(k+1)
			t.Logf("partners %d, %2d->%2d members: active owner changed %.2f x fair, new replica copies %.2f x fair",
				partners, k, k+1, float64(owner)/fair, float64(replicaCopies)/fair)
			if float64(owner) > 1.3*fair || float64(replicaCopies) > 2.5*fair {
				t.Errorf("partners %d, %d->%d members: %d owners changed, %d new replica copies; want at most 1.3 and 2.5 x %.1f",
					partners, k, k+1, owner, replicaCopies, fair)
			}
			prev = next
		}
	}
}
