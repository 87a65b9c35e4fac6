package vbucket

import (
	"fmt"
	"testing"

	"github.com/buraksezer/consistent"
)

// TestConsistentBaseline prints what github.com/buraksezer/consistent gives
// for the placement Place computes (see the package comment): partition
// owners as vbucket owners, over node0..node15 with 1024 vbuckets. It
// documents the decision and checks nothing, so it runs only with -v.
func TestConsistentBaseline(t *testing.T) {
	if !testing.Verbose() {
		t.Skip("prints figures only; run with -v")
	}
	const n = DefaultVBuckets
	members := names("node%d", 16)
	owners := func(k, rf int, load float64) ([]string, *consistent.Consistent) {
		ms := make([]consistent.Member, k)
		for i := range ms {
			ms[i] = ringMember(members[i])
		}
		c := consistent.New(ms, consistent.Config{Hasher: xxhasher{}, PartitionCount: n, ReplicationFactor: rf, Load: load})
		o := make([]string, n)
		for vb := range o {
			o[vb] = c.GetPartitionOwner(vb).String()
		}
		return o, c
	}
	for _, cfg := range []struct {
		rf   int
		load float64
	}{{20, 1.25}, {100, 1.1}, {1000, 1.25}, {1000, 1.05}, {1000, 1}} {
		worstDev, worstMove := 0.0, 0.0
		prev, _ := owners(1, cfg.rf, cfg.load)
		for k := 2; k <= 16; k++ {
			cur, _ := owners(k, cfg.rf, cfg.load)
			count := map[string]int{}
			moved := 0
			for vb := range cur {
				count[cur[vb]]++
				if cur[vb] != prev[vb] {
					moved++
				}
			}
			counts := make([]int, k)
			for i := range counts {
				counts[i] = count[members[i]]
			}
			fair := float64(n) / float64(k)
			_, _, dev := spread(counts, fair)
			worstDev, worstMove = max(worstDev, dev), max(worstMove, float64(moved)/fair)
			prev = cur
		}
		t.Logf("consistent ReplicationFactor %4d Load %.2f: active off fair by up to %4.1f%%, a join moves up to %.2f x fair",
			cfg.rf, cfg.load, 100*worstDev, worstMove)
	}

	// Replicas from GetClosestNForPartition: the members after the owner in
	// the order of their names' hashes, the same for every partition.
	own, c := owners(8, 20, 1.25)
	holders := map[string]map[string]bool{}
	for vb := range own {
		closest, err := c.GetClosestNForPartition(vb, 2)
		if err != nil {
			t.Fatal(err)
		}
		a, r := closest[0].String(), closest[1].String()
		if holders[a] == nil {
			holders[a] = map[string]bool{}
		}
		holders[a][r] = true
	}
	line := ""
	for _, m := range members[:8] {
		line += fmt.Sprintf(" %s:%d", m, len(holders[m]))
	}
	t.Logf("consistent GetClosestNForPartition, 8 members: distinct replica holders of each member's vbuckets:%s", line)

	rows := mustPlace(t, members[:8], n, 1)
	spreadOf := make([]map[int]bool, 8)
	for _, row := range rows {
		if spreadOf[row[0]] == nil {
			spreadOf[row[0]] = map[int]bool{}
		}
		spreadOf[row[0]][row[1]] = true
	}
	line = ""
	for i, m := range members[:8] {
		line += fmt.Sprintf(" %s:%d", m, len(spreadOf[i]))
	}
	t.Logf("Place, 8 members: distinct replica holders of each member's vbuckets:%s", line)
}
