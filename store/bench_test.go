package store

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

var benchValueSizes = []struct {
	name string
	size int
}{{"10B", 10}, {"100B", 100}, {"1KB", 1 << 10}, {"10KB", 10 << 10}}

const benchKeys = 1 << 14

// benchStore returns a store with the given memory limit that was given
// benchKeys keys with values of size bytes, and the keys.
func benchStore(b *testing.B, limit int64, size int) (*Store, [][]byte) {
	s, err := New(Config{MemoryLimit: limit, SweepInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.Close)
	keys := make([][]byte, benchKeys)
	value := make([]byte, size)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "key:%08d", i)
		if _, err := s.Set(ModeSet, keys[i], value, 0, 0, 0, 0); err != nil {
			b.Fatal(err)
		}
	}
	// Visit the keys in random order, as clients do: insertion order
	// would favour a store that lays items out in it.
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	return s, keys
}

func BenchmarkGet(b *testing.B) {
	for _, v := range benchValueSizes {
		b.Run("value="+v.name, func(b *testing.B) {
			s, keys := benchStore(b, 1<<30, v.size)
			dst := make([]byte, 0, v.size)
			b.ReportAllocs()
			b.SetBytes(int64(v.size))
			i := 0
			for b.Loop() {
				if _, _, ok := s.Get(keys[i%benchKeys], dst[:0]); !ok {
					b.Fatal("miss")
				}
				i++
			}
		})
	}
}

func BenchmarkGetParallel(b *testing.B) {
	for _, v := range benchValueSizes {
		b.Run("value="+v.name, func(b *testing.B) {
			s, keys := benchStore(b, 1<<30, v.size)
			var seq atomic.Uint64
			b.ReportAllocs()
			b.SetBytes(int64(v.size))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				dst := make([]byte, 0, v.size)
				i := int(seq.Add(1) * 7919)
				for pb.Next() {
					if _, _, ok := s.Get(keys[i%benchKeys], dst[:0]); !ok {
						b.Error("miss")
						return
					}
					i++
				}
			})
		})
	}
}

// BenchmarkSet overwrites existing keys; with 10KB values the 16K keys do
// not fit in 64 MiB, so it also measures eviction.
func BenchmarkSet(b *testing.B) {
	for _, v := range benchValueSizes {
		b.Run("value="+v.name, func(b *testing.B) {
			s, keys := benchStore(b, DefaultMemoryLimit, v.size)
			value := make([]byte, v.size)
			b.ReportAllocs()
			b.SetBytes(int64(v.size))
			i := 0
			for b.Loop() {
				if _, err := s.Set(ModeSet, keys[i%benchKeys], value, 0, 0, 0, 0); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

func BenchmarkSetParallel(b *testing.B) {
	for _, v := range benchValueSizes {
		b.Run("value="+v.name, func(b *testing.B) {
			s, keys := benchStore(b, DefaultMemoryLimit, v.size)
			var seq atomic.Uint64
			b.ReportAllocs()
			b.SetBytes(int64(v.size))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				value := make([]byte, v.size)
				i := int(seq.Add(1) * 7919)
				for pb.Next() {
					if _, err := s.Set(ModeSet, keys[i%benchKeys], value, 0, 0, 0, 0); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}

// BenchmarkSetWithMeta is a replica applying copies: each overwrites an
// existing key with a newer CAS, as the active's writes arrive.
func BenchmarkSetWithMeta(b *testing.B) {
	for _, v := range benchValueSizes[:2] {
		b.Run("value="+v.name, func(b *testing.B) {
			s, keys := benchStore(b, 1<<30, v.size)
			value := make([]byte, v.size)
			b.ReportAllocs()
			b.SetBytes(int64(v.size))
			i := 0
			for b.Loop() {
				m := Meta{CAS: s.NextCAS() + 1}
				if ok, err := s.SetWithMeta(keys[i%benchKeys], value, m); !ok || err != nil {
					b.Fatalf("not applied: %v", err)
				}
				i++
			}
		})
	}
}
