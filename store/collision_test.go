package store

import (
	"testing"
)

// TestHashCollision: two keys with the same 64-bit hash share one index
// slot. A 64-bit collision cannot be found by search, so the test stores
// the second key under the first one's hash through the write path's
// internals, as Set would had the hashes collided. Neither key may ever be
// answered with the other's value: the newer write takes the slot, the
// older key reads as missing, is counted as evicted, and its bytes no
// longer count as live.
func TestHashCollision(t *testing.T) {
	s, err := New(Config{MemoryLimit: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first, second := []byte("first"), []byte("second")
	if _, err := s.Set(ModeSet, first, []byte("1"), 0, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	hash := s.hash(first)
	sh := s.shardOf(hash)

	// Store second under first's hash, as Set does.
	sh.mu.Lock()
	off, h := s.lookup(sh, hash, second)
	if h != nil {
		sh.mu.Unlock()
		t.Fatal("second found under first's hash before it was stored")
	}
	s.put(sh, hash, off, h, second, []byte("2"), nil, Meta{CAS: s.NextCAS()})
	_, h = s.lookup(sh, hash, second)
	got, bytes, evictions := "", sh.bytes, sh.stats.evictions
	if h != nil {
		got = string(sh.value(s.lookup(sh, hash, second)))
	}
	sh.mu.Unlock()
	if got != "2" {
		t.Fatalf("second under the shared hash: %q, want %q", got, "2")
	}
	if v, _, ok := s.Get(first, nil); ok {
		t.Fatalf("first reads %q after second took its slot", v)
	}
	if want := ItemSize(len(second), 1); bytes != want || evictions != 1 {
		t.Fatalf("live bytes %d, evictions %d; want %d and 1", bytes, evictions, want)
	}

	// first written again takes the slot back the same way.
	if _, err := s.Set(ModeSet, first, []byte("3"), 0, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	if v, _, ok := s.Get(first, nil); !ok || string(v) != "3" {
		t.Fatalf("first after writing it again: %q, %v", v, ok)
	}
	sh.mu.Lock()
	_, h = s.lookup(sh, hash, second)
	evictions = sh.stats.evictions
	sh.mu.Unlock()
	if h != nil || evictions != 2 {
		t.Fatalf("second still found (%v) or evictions %d, want gone and 2", h != nil, evictions)
	}
	if st := s.Stats(); st.CurrItems != 1 {
		t.Fatalf("%d items, want 1", st.CurrItems)
	}
}
