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
	rows, err := Place(members, n, replicas)
	if err != nil {
		t.Fatalf("Place(%d members, %d, %d): %v", len(members), n, replicas, err)
	}
	return rows
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
		want     error
	}{
		{"no members", nil, 1024, 1, ErrNoMembers},
		{"duplicate", []string{"a", "b", "a"}, 1024, 1, ErrDuplicate},
		{"zero vbuckets", []string{"a"}, 0, 1, ErrBadCount},
		{"not a power of two", []string{"a"}, 1000, 1, ErrBadCount},
		{"too many vbuckets", []string{"a"}, 2 * MaxVBuckets, 1, ErrBadCount},
		{"negative replicas", []string{"a"}, 1024, -1, ErrBadReplicas},
		{"too many replicas", []string{"a"}, 1024, MaxReplicas + 1, ErrBadReplicas},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := Place(tc.members, tc.n, tc.replicas)
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
				if _, err := Place(members, bc.n, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
