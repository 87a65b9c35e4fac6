package cluster

import (
	"slices"
	"testing"

	"vbcache/vbucket"
)

func servers(names ...string) []vbucket.Server {
	out := make([]vbucket.Server, len(names))
	for i, n := range names {
		out[i] = vbucket.Server{Name: n, KV: "127.0.0.1:1"}
	}
	return out
}

func build(t *testing.T, names ...string) *vbucket.Map {
	t.Helper()
	m, err := vbucket.Build(1, servers(names...), 64, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func set(names ...string) map[string]bool {
	s := map[string]bool{}
	for _, n := range names {
		s[n] = true
	}
	return s
}

func never(int64, string) bool  { return false }
func always(int64, string) bool { return true }

func TestNextMap(t *testing.T) {
	abc := build(t, "a", "b", "c")
	ab := build(t, "a", "b")

	t.Run("first map is the target", func(t *testing.T) {
		if got := nextMap(nil, abc, set("a", "b", "c"), never); got != abc {
			t.Fatal("want the target")
		}
	})
	t.Run("settled map stands", func(t *testing.T) {
		if got := nextMap(abc, build(t, "a", "b", "c"), set("a", "b", "c"), always); got != nil {
			t.Fatalf("published %+v", got)
		}
	})
	t.Run("failover promotes replicas", func(t *testing.T) {
		got := nextMap(abc, ab, set("a", "b"), never)
		if err := got.Validate(); err != nil {
			t.Fatal(err)
		}
		if got.IndexOf("c") >= 0 || len(got.Forward) > 0 {
			t.Fatalf("failover map still names c or moves data: %+v", got.Servers)
		}
		c := abc.IndexOf("c")
		for vb, row := range abc.VBuckets {
			if row[0] != c {
				if name(got, got.VBuckets[vb][0]) != name(abc, row[0]) {
					t.Fatalf("vb %d: active moved from %s though it survived", vb, name(abc, row[0]))
				}
				continue
			}
			// c was active: its replica takes over, with the data.
			if want := name(abc, row[1]); name(got, got.VBuckets[vb][0]) != want {
				t.Fatalf("vb %d: promoted %s, want c's replica %s", vb, name(got, got.VBuckets[vb][0]), want)
			}
		}
	})
	t.Run("join starts with a forward map, then waits for ready", func(t *testing.T) {
		target := build(t, "a", "b", "c")
		fwd := nextMap(ab, target, set("a", "b", "c"), never)
		if len(fwd.Forward) == 0 || !samePlacement(fwd, ab) || !sameRows(fwd, fwd.Forward, target, target.VBuckets) {
			t.Fatal("want the current rows with the target as forward map")
		}
		fwd.Rev = 2
		if got := nextMap(fwd, target, set("a", "b", "c"), func(rev int64, n string) bool { return n != "c" }); got != nil {
			t.Fatal("handed over before every server was ready")
		}
		if got := nextMap(fwd, target, set("a", "b", "c"), always); got != target {
			t.Fatal("want the target once all are ready")
		}
	})
	t.Run("leaving node hands over instead of failing over", func(t *testing.T) {
		got := nextMap(abc, ab, set("a", "b", "c"), never)
		if len(got.Forward) == 0 || got.IndexOf("c") < 0 {
			t.Fatal("a live leaving node must keep its vbuckets until they are streamed")
		}
		if !slices.ContainsFunc(got.VBuckets, func(r []int) bool { return r[0] == got.IndexOf("c") }) {
			t.Fatal("c lost its active vbuckets before the hand-over")
		}
	})
}
