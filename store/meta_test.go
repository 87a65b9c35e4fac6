package store

import (
	"bytes"
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
)

func TestSetWithMetaNewestWins(t *testing.T) {
	s, _ := newTestStore(t, Config{})
	k := []byte("k")
	tests := []struct {
		name    string
		value   string
		cas     uint64
		applied bool
		want    string
	}{
		{"absent key", "v10", 10, true, "v10"},
		{"older copy", "v5", 5, false, "v10"},
		{"same CAS, same expiration", "again", 10, false, "v10"},
		{"newer copy", "v20", 20, true, "v20"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, err := s.SetWithMeta(k, []byte(tt.value), Meta{Flags: 7, DataType: 1, CAS: tt.cas})
			if err != nil || ok != tt.applied {
				t.Fatalf("SetWithMeta = %v, %v; want %v", ok, err, tt.applied)
			}
			v, m, hit := s.Get(k, nil)
			if !hit || string(v) != tt.want || m.Flags != 7 || m.DataType != 1 {
				t.Fatalf("Get = %q %+v %v; want %q", v, m, hit, tt.want)
			}
		})
	}
	// The counter is above every CAS applied: a local write wins over them.
	cas, err := s.Set(ModeSet, k, []byte("local"), 0, 0, 0, 0)
	if err != nil || cas <= 20 {
		t.Fatalf("local Set CAS %d (%v), want above 20", cas, err)
	}
	if s.DeleteWithMeta(k, cas) {
		t.Fatal("a deletion with the item's own CAS removed it")
	}
	if !s.DeleteWithMeta(k, cas+1) {
		t.Fatal("a newer deletion did not remove the item")
	}
	if _, _, hit := s.Get(k, nil); hit {
		t.Fatal("item survived its deletion")
	}
}

func TestKeysAndDeleteWhere(t *testing.T) {
	s, _ := newTestStore(t, Config{Shards: 4})
	for i := range 100 {
		s.Set(ModeSet, []byte(fmt.Sprintf("a%d", i)), []byte("x"), 0, 0, 0, 0)
		s.Set(ModeSet, []byte(fmt.Sprintf("b%d", i)), []byte("y"), 0, 0, 0, 0)
	}
	isA := func(k []byte) bool { return k[0] == 'a' }
	var got []string
	s.Keys(isA, func(k []byte) bool {
		got = append(got, string(k))
		_, m, ok := s.GetWithMeta(k, nil) // fn may use the store
		if !ok || m.CAS == 0 {
			t.Errorf("GetWithMeta(%s) = %+v, %v", k, m, ok)
		}
		return true
	})
	if len(got) != 100 || slices.ContainsFunc(got, func(k string) bool { return k[0] != 'a' }) {
		t.Fatalf("Keys returned %d keys: %v", len(got), got[:min(5, len(got))])
	}
	if n := s.DeleteWhere(isA); n != 100 {
		t.Fatalf("DeleteWhere removed %d, want 100", n)
	}
	if st := s.Stats(); st.CurrItems != 100 {
		t.Fatalf("%d items left, want 100", st.CurrItems)
	}
	checkInvariants(t, s)
	if v, _, ok := s.Get([]byte("b1"), nil); !ok || !bytes.Equal(v, []byte("y")) {
		t.Fatal("DeleteWhere removed a non-matching item")
	}
}

// TestWalksYield: Keys and DeleteWhere let other goroutines run while they
// walk the shards, even on one P: a goroutine started before the walk runs
// before the walk ends (see yieldNote).
func TestWalksYield(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	s, _ := newTestStore(t, Config{Shards: 64})
	for i := range 1000 {
		s.Set(ModeSet, []byte(fmt.Sprintf("k%d", i)), []byte("v"), 0, 0, 0, 0)
	}
	walks := []struct {
		name string
		walk func(match func([]byte) bool)
	}{
		{"Keys", func(match func([]byte) bool) { s.Keys(match, func([]byte) bool { return true }) }},
		{"DeleteWhere", func(match func([]byte) bool) { s.DeleteWhere(match) }},
	}
	for _, w := range walks {
		var ran atomic.Bool
		go ran.Store(true)
		seen := false
		w.walk(func([]byte) bool {
			seen = seen || ran.Load()
			return false
		})
		if !seen {
			t.Errorf("%s: a goroutine waiting to run did not run during the walk", w.name)
		}
	}
}

// TestSetWithMetaCarriesTouch: a TOUCH keeps the CAS, so its copy has the
// item's CAS and a new expiration, and must be applied.
func TestSetWithMetaCarriesTouch(t *testing.T) {
	s, _ := newTestStore(t, Config{})
	k := []byte("k")
	s.SetWithMeta(k, []byte("v"), Meta{CAS: 10})
	if ok, _ := s.SetWithMeta(k, []byte("v"), Meta{CAS: 10, Exp: t0 + 100}); !ok {
		t.Fatal("a touched copy was refused")
	}
	if _, m, _ := s.Get(k, nil); m.Exp != t0+100 || m.CAS != 10 {
		t.Fatalf("meta %+v, want the new expiration and CAS 10", m)
	}
}
