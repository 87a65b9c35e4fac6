package store

import (
	"bytes"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"unsafe"
)

// shard is one independently locked part of a Store: an index from key hash
// to record, and a ring of records.
//
// The ring is a byte slice used as a circular log. Positions are monotonic
// byte counts (the physical offset is pos % len(ring)); the records live in
// [tail, head), oldest first, and head-tail never exceeds len(ring). A new
// record is written at head; when there is no room, records are taken off
// the tail: evicted, reclaimed if dead, skipped if stale (overwritten,
// deleted or padding), or, if read since they were written, moved to the
// head once (the CLOCK second chance). A record never wraps around the end
// of the ring: a padding record fills the end instead.
//
// The index holds every live record and nothing else. It maps the key's
// 64-bit hash to the record's physical offset divided by 8; a record whose
// offset is not its hash's index entry is stale. Neither the index nor the
// ring holds a Go pointer, so the garbage collector never scans the items.
type shard struct {
	// mu guards every field below and the ring's contents. Readers of a
	// record hold at least the read lock; writers of anything but a
	// record's bits hold the write lock.
	mu   sync.RWMutex
	idx  map[uint64]uint32
	ring []byte // nil once the Store is closed
	head uint64
	tail uint64
	// bytes is the total size of the live records.
	bytes int64
	stats counters
	// scratch holds an old value while its record is being replaced.
	scratch []byte

	_ [64]byte // keep neighbouring shards' locks off one cache line
}

// counters are a shard's contributions to Stats.
type counters struct {
	totalItems, evictions, evictedUnfetched, expiredUnfetched, reclaimed uint64
}

// Bits of header.bits.
const (
	bitAccessed uint32 = 1 << iota // read since written or moved; cleared by second chance
	bitFetched                     // read since stored; never cleared until the next store
	bitPad                         // a padding record: the rest of it is not a header
)

// header starts every record in a ring. The key follows it, then the value,
// then padding up to a multiple of 8 bytes (recordAlign). A padding record
// has only size and bits; it may be as short as 8 bytes.
type header struct {
	size     uint32        // bytes of the whole record, a multiple of recordAlign
	bits     atomic.Uint32 // bitAccessed | bitFetched, set by readers under the read lock
	cas      uint64
	exp      uint32 // absolute Unix seconds, 0 = never; see clampExp
	flags    uint32
	vlen     uint32
	klen     uint16
	dataType uint8
	_        uint8
}

const (
	// ItemOverhead is the size of the header every item carries in front
	// of its key and value; see ItemSize.
	ItemOverhead = 32
	recordAlign  = 8
)

// ItemOverhead must be the header's size: this fails to compile otherwise.
var _ = [1]struct{}{}[unsafe.Sizeof(header{})-ItemOverhead]

// ItemSize is what an item with the given key and value lengths takes of
// the memory limit: ItemOverhead + keyLen + valueLen, rounded up to a
// multiple of 8. The index entry is not included: it is 19 to 39 bytes per
// item on the Go heap (a Go map slot of 16 bytes plus a control byte, at a
// load factor between 7/16 and 7/8), outside the limit, as memcached's hash
// table is outside its.
func ItemSize(keyLen, valueLen int) int64 {
	return int64(ItemOverhead+keyLen+valueLen+recordAlign-1) &^ (recordAlign - 1)
}

// clampExp stores an expiration in the header's 32 bits. Expirations past
// 2106 become "the end of 2106", which no cache entry outlives in practice.
func clampExp(exp int64) uint32 { return uint32(min(max(exp, 0), 1<<32-1)) }

func (h *header) dead(now int64) bool { return h.exp != 0 && int64(h.exp) <= now }

// expired reports whether h is dead now. It reads the clock only for items
// that expire, so most operations never read it.
func (s *Store) expired(h *header) bool { return h.exp != 0 && int64(h.exp) <= s.now() }

// past reports whether the expiration exp has passed: an item stored with
// it would be dead at once.
func (s *Store) past(exp int64) bool { return exp != 0 && exp <= s.now() }

func (h *header) meta() Meta {
	return Meta{Flags: h.flags, DataType: h.dataType, Exp: int64(h.exp), CAS: h.cas}
}

// markRead records a read. It writes the shared bits only if they change,
// so a hot key does not bounce its cache line between readers.
func (h *header) markRead() {
	const both = bitAccessed | bitFetched
	if h.bits.Load()&both != both {
		h.bits.Or(both)
	}
}

// rec returns the header of the record at physical offset off.
func (sh *shard) rec(off uint64) *header {
	return (*header)(unsafe.Pointer(&sh.ring[off]))
}

// recordAt returns the size and bits of whatever record starts at off,
// padding included.
func (sh *shard) recordAt(off uint64) (size, bits uint32) {
	return binary.NativeEndian.Uint32(sh.ring[off:]), (*atomic.Uint32)(unsafe.Pointer(&sh.ring[off+4])).Load()
}

func (sh *shard) key(off uint64, h *header) []byte {
	k := off + uint64(ItemOverhead)
	return sh.ring[k : k+uint64(h.klen) : k+uint64(h.klen)]
}

func (sh *shard) value(off uint64, h *header) []byte {
	v := off + uint64(ItemOverhead) + uint64(h.klen)
	return sh.ring[v : v+uint64(h.vlen) : v+uint64(h.vlen)]
}

// find returns the offset and header of key's record, live or dead, or nil.
func (sh *shard) find(hash uint64, key []byte) (uint64, *header) {
	i, ok := sh.idx[hash]
	if !ok {
		return 0, nil
	}
	off := uint64(i) * recordAlign
	h := sh.rec(off)
	if !bytes.Equal(sh.key(off, h), key) {
		return 0, nil // another key with the same 64-bit hash
	}
	return off, h
}

// lookup returns key's live record, or nil; a dead record it finds is
// reclaimed. The caller holds the write lock.
func (s *Store) lookup(sh *shard, hash uint64, key []byte) (uint64, *header) {
	off, h := sh.find(hash, key)
	if h != nil && s.expired(h) {
		sh.reclaim(hash, h)
		return 0, nil
	}
	return off, h
}

// remove drops the record h of hash from the index; its bytes in the ring
// are garbage from now on.
func (sh *shard) remove(hash uint64, h *header) {
	delete(sh.idx, hash)
	sh.bytes -= int64(h.size)
}

// reclaim removes the dead record h and counts it.
func (sh *shard) reclaim(hash uint64, h *header) {
	sh.stats.reclaimed++
	if h.bits.Load()&bitFetched == 0 {
		sh.stats.expiredUnfetched++
	}
	sh.remove(hash, h)
}

// evict removes the live record h to make room and counts it.
func (sh *shard) evict(hash uint64, h *header) {
	sh.stats.evictions++
	if h.bits.Load()&bitFetched == 0 {
		sh.stats.evictedUnfetched++
	}
	sh.remove(hash, h)
}

// put stores key = a+b with meta m. off, h are key's current record (h nil
// if there is none); neither a nor b may point into the ring unless the
// record keeps its size, in which case it is rewritten in place (see write).
// The caller holds the write lock.
func (s *Store) put(sh *shard, hash uint64, off uint64, h *header, key, a, b []byte, m Meta) {
	size := ItemSize(len(key), len(a)+len(b))
	if h != nil && int64(h.size) == size {
		h.vlen = uint32(len(a) + len(b))
		write(sh.value(off, h), a, b)
		h.bits.Store(bitAccessed) // as if written anew: one more lap in the ring
	} else {
		if h != nil {
			// APPEND and PREPEND pass the old value as a or b; the ring
			// may reuse its bytes before the copy below.
			a, b = sh.keep(a, off, h), sh.keep(b, off, h)
			sh.remove(hash, h)
		} else if _, ok := sh.idx[hash]; ok {
			// Another key with the same hash: the index has one slot for
			// both, and the newer write takes it.
			sh.evict(hash, sh.rec(uint64(sh.idx[hash])*recordAlign))
		}
		off = s.alloc(sh, uint32(size))
		h = sh.rec(off)
		*h = header{size: uint32(size), klen: uint16(len(key)), vlen: uint32(len(a) + len(b))}
		copy(sh.key(off, h), key)
		write(sh.value(off, h), a, b)
		sh.idx[hash] = uint32(off / recordAlign)
		sh.bytes += size
	}
	h.cas, h.exp, h.flags, h.dataType = m.CAS, clampExp(m.Exp), m.Flags, m.DataType
}

// keep returns v, or a copy of it if v is the value of the record h at off.
// Copies up to 64 KiB reuse the shard's scratch buffer.
func (sh *shard) keep(v []byte, off uint64, h *header) []byte {
	old := sh.value(off, h)
	if len(v) == 0 || len(old) == 0 || &v[0] != &old[0] {
		return v
	}
	if len(v) > 64<<10 {
		return bytes.Clone(v)
	}
	sh.scratch = append(sh.scratch[:0], v...)
	return sh.scratch
}

// write stores the value a+b into dst (len(dst) == len(a)+len(b)). Either a
// or b may be the record's current value, aliasing dst's own memory at
// dst[0:len(old)]: b is copied first (a memmove, so an old value in b moves
// right intact) and then a (an old value in a is already in place).
func write(dst, a, b []byte) {
	copy(dst[len(a):], b)
	copy(dst, a)
}

// alloc makes room for a record of size bytes at the head and returns its
// physical offset, taking records off the tail as needed. size is at most
// len(ring). The caller holds the write lock.
func (s *Store) alloc(sh *shard, size uint32) uint64 {
	n := uint64(size)
	c := uint64(len(sh.ring))
	for {
		free := c - (sh.head - sh.tail)
		off := sh.head % c
		if off+n > c {
			// The record would cross the end: pad to the end first, once
			// the padding itself fits.
			if pad := c - off; free >= pad {
				sh.pad(off, pad)
				continue
			}
		} else if free >= n {
			sh.head += n
			return off
		}
		s.advanceTail(sh)
	}
}

// pad writes a padding record of n bytes at off, the head.
func (sh *shard) pad(off, n uint64) {
	binary.NativeEndian.PutUint32(sh.ring[off:], uint32(n))
	(*atomic.Uint32)(unsafe.Pointer(&sh.ring[off+4])).Store(bitPad)
	sh.head += n
}

// advanceTail takes the tail record off the ring: padding and stale records
// are skipped, dead ones reclaimed, unread ones evicted, and one read since
// it was written is moved to the head with its bit cleared. Each call
// either frees the record's bytes or clears a bit that no reader can set
// again while the caller holds the write lock, so a loop of calls ends.
func (s *Store) advanceTail(sh *shard) {
	c := uint64(len(sh.ring))
	off := sh.tail % c
	size, bits := sh.recordAt(off)
	if bits&bitPad != 0 {
		sh.tail += uint64(size)
		return
	}
	h := sh.rec(off)
	hash := s.hash(sh.key(off, h))
	if i, ok := sh.idx[hash]; !ok || uint64(i)*recordAlign != off {
		sh.tail += uint64(size) // stale
		return
	}
	switch {
	case s.expired(h):
		sh.reclaim(hash, h)
	case bits&bitAccessed != 0:
		h.bits.And(^bitAccessed)
		sh.moveTailToHead(hash, size)
		return
	default:
		sh.evict(hash, h)
	}
	sh.tail += uint64(size)
}

// moveTailToHead moves the live tail record of the given size and hash to
// the head. Taking it off the tail frees its size; the free space is a
// stretch that starts at the head and ends where the record ended. If the
// stretch wraps past the end of the ring, padding fills the end and the
// record goes to offset 0, which still lies at or before its old place;
// otherwise the head is at or before the old place. Either way the record
// fits, and copy moves it correctly even where old and new places overlap.
// (alloc only moves records while the free stretch ends before the end of
// the ring, so it never needs the padding; the function does not rely on
// that.)
func (sh *shard) moveTailToHead(hash uint64, size uint32) {
	c := uint64(len(sh.ring))
	n := uint64(size)
	src := sh.tail % c
	sh.tail += n
	dst := sh.head % c
	if dst+n > c {
		sh.pad(dst, c-dst)
		dst = 0
	}
	copy(sh.ring[dst:dst+n], sh.ring[src:src+n])
	sh.idx[hash] = uint32(dst / recordAlign)
	sh.head += n
}

// clear drops every item and rewinds the ring, handing its memory back to
// the operating system. The caller holds the write lock.
func (sh *shard) clear() {
	sh.stats.reclaimed += uint64(len(sh.idx))
	sh.idx = make(map[uint64]uint32)
	sh.bytes = 0
	if used := min(sh.head, uint64(len(sh.ring))); used > 0 {
		releaseArena(sh.ring[:used])
	}
	sh.head, sh.tail = 0, 0
}
