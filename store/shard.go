package store

import (
	"sync"
	"sync/atomic"
	"unsafe"
)

// shard is one independently locked part of a Store.
type shard struct {
	// mu guards every field below and every non-atomic field of the entries
	// in items. Readers of an entry's value hold at least the read lock;
	// writers of data, meta or the list hold the write lock.
	mu         sync.RWMutex
	items      map[string]*entry // keys alias entry.data; see entry.key
	head, tail *entry            // head: most recently linked
	bytes      int64             // bytes charged for the items of this shard
	stats      counters

	_ [64]byte // keep neighbouring shards' locks off one cache line
}

// counters are a shard's contributions to Stats.
type counters struct {
	totalItems, evictions, evictedUnfetched, expiredUnfetched, reclaimed uint64
}

// Bits of entry.bits.
const (
	bitAccessed uint32 = 1 << iota // read since linked at the head; cleared by second chance
	bitFetched                     // read since stored; never cleared until the next store
)

// entry is one item. data holds the key followed by the value in a single
// allocation owned by the entry; the map key string points into it, so the
// key bytes never change while the entry is in the map. The value bytes are
// rewritten in place only under the shard's write lock.
type entry struct {
	prev, next *entry
	data       []byte
	cas        uint64
	exp        int64
	flags      uint32
	klen       uint32
	bits       atomic.Uint32 // bitAccessed | bitFetched; set by readers under the read lock
	dataType   uint8
}

func (e *entry) key() string   { return unsafe.String(unsafe.SliceData(e.data), e.klen) }
func (e *entry) value() []byte { return e.data[e.klen:] }
func (e *entry) charge() int64 { return int64(len(e.data)) + ItemOverhead }

func (e *entry) meta() Meta {
	return Meta{Flags: e.flags, DataType: e.dataType, Exp: e.exp, CAS: e.cas}
}

// markRead records a read. It writes the shared bits only if they change,
// so a hot key does not bounce its cache line between readers.
func (e *entry) markRead() {
	const both = bitAccessed | bitFetched
	if e.bits.Load()&both != both {
		e.bits.Or(both)
	}
}

// write stores the value a+b into dst (len(dst) == len(a)+len(b)). Either a
// or b may be the entry's current value, aliasing dst's own memory at
// dst[0:len(old)]: b is copied first (a memmove, so an old value in b
// moves right intact) and then a (an old value in a is already in place).
func write(dst, a, b []byte) {
	copy(dst[len(a):], b)
	copy(dst, a)
}

// pushFront links e at the head of the list.
func (sh *shard) pushFront(e *entry) {
	e.prev, e.next = nil, sh.head
	if sh.head != nil {
		sh.head.prev = e
	} else {
		sh.tail = e
	}
	sh.head = e
}

// unlink removes e from the list.
func (sh *shard) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		sh.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		sh.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

// lookup returns the live entry for key, or nil; a dead entry it finds is
// reclaimed. The caller holds sh's write lock.
func (s *Store) lookup(sh *shard, key []byte, now int64) *entry {
	e := sh.items[string(key)]
	if e != nil && dead(e, now) {
		s.reclaim(sh, e)
		return nil
	}
	return e
}

// remove drops e from sh and uncharges it. The caller holds sh's write lock.
func (s *Store) remove(sh *shard, e *entry) {
	sh.unlink(e)
	delete(sh.items, e.key())
	sh.bytes -= e.charge()
	s.bytes.Add(-e.charge())
}

// reclaim removes the dead entry e and counts it.
func (s *Store) reclaim(sh *shard, e *entry) {
	sh.stats.reclaimed++
	if e.bits.Load()&bitFetched == 0 {
		sh.stats.expiredUnfetched++
	}
	s.remove(sh, e)
}

// put stores key = a+b with meta m in sh, reusing e (the key's current
// entry) if it is not nil, links the entry at the head and evicts from sh
// while the store is over its limit. It reports whether the store is still
// over the limit. The caller holds sh's write lock.
func (s *Store) put(sh *shard, e *entry, key, a, b []byte, m Meta, now int64) (over bool) {
	n := len(key) + len(a) + len(b)
	var delta int64
	if e == nil {
		e = &entry{data: make([]byte, n), klen: uint32(len(key))}
		copy(e.data, key)
		write(e.value(), a, b)
		sh.items[e.key()] = e
		delta = e.charge()
	} else {
		sh.unlink(e) // keep e out of reach of the eviction below
		delta = int64(n - len(e.data))
		if c := cap(e.data); c >= n && c-n <= n/4 {
			// Rewrite in place; at most a quarter of the buffer is slack.
			e.data = e.data[:n]
			write(e.value(), a, b)
		} else {
			data := make([]byte, n)
			copy(data, key)
			write(data[len(key):], a, b)
			delete(sh.items, e.key()) // the map key points into the old buffer
			e.data = data
			sh.items[e.key()] = e
		}
	}
	e.flags, e.dataType, e.exp, e.cas = m.Flags, m.DataType, m.Exp, m.CAS
	e.bits.Store(0)
	if delta != 0 {
		sh.bytes += delta
		if s.bytes.Add(delta) > s.limit {
			s.evict(sh, now)
		}
	}
	sh.pushFront(e)
	return s.bytes.Load() > s.limit
}

// evict removes items from sh's tail until the store is within its limit or
// sh's list is empty. A tail accessed since it was linked gets a second
// chance: its bit is cleared and it moves to the head. Dead items are
// reclaimed rather than counted as evictions. The caller holds sh's write
// lock, so no reader can set an accessed bit meanwhile and each item moves
// at most once: the loop ends.
func (s *Store) evict(sh *shard, now int64) {
	for s.bytes.Load() > s.limit && sh.tail != nil {
		e := sh.tail
		bits := e.bits.Load()
		switch {
		case dead(e, now):
			s.reclaim(sh, e)
		case bits&bitAccessed != 0:
			e.bits.And(^bitAccessed)
			sh.unlink(e)
			sh.pushFront(e)
		default:
			sh.stats.evictions++
			if bits&bitFetched == 0 {
				sh.stats.evictedUnfetched++
			}
			s.remove(sh, e)
		}
	}
}

// evictOthers evicts from the shards after shard idx, in turn, until the
// store is within its limit. It holds one shard lock at a time.
func (s *Store) evictOthers(idx uint64, now int64) {
	for i := uint64(1); i <= s.mask && s.bytes.Load() > s.limit; i++ {
		sh := &s.shards[(idx+i)&s.mask]
		sh.mu.Lock()
		s.evict(sh, now)
		sh.mu.Unlock()
	}
}
