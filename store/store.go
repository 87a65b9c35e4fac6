// Package store is the in-memory item store behind the cache server: a
// sharded map of key -> value with memcached binary-protocol semantics
// (SET/ADD/REPLACE/APPEND/PREPEND, CAS, INCR/DECR, TOUCH, GAT, FLUSH), a
// memory limit enforced by approximately-LRU eviction, and lazy plus
// background reclamation of expired items.
//
// Layout: keys are spread over a power-of-two number of shards by a
// per-Store seeded 64-bit hash. Each shard has its own sync.RWMutex, an
// index (a Go map from key hash to ring offset) and a ring: a fixed slice
// of the store's arena, written as a circular log of records (header, key,
// value). See shard for the ring's rules. The arena is one anonymous memory
// mapping of MemoryLimit bytes outside the Go heap; pages become resident
// as the rings first reach them, and Flush hands them back. No item holds
// a Go pointer, so the garbage collector never walks the items: its work
// does not grow with the number of items, and the heap holds only the
// indexes.
//
// Invariants:
//
//   - No lock covers the whole store and no goroutine ever holds two shard
//     locks at once.
//   - A shard's index holds exactly its live and not-yet-reclaimed records;
//     every other record in its ring is garbage that the tail skips.
//   - Bytes charged for an item are ItemSize(len(key), len(value)). Each
//     shard holds at most MemoryLimit/shards bytes of records, live or
//     garbage, so the store never holds more than MemoryLimit.
//   - Eviction is CLOCK-like second chance in write order: the oldest
//     record is evicted unless it was read since it was written, in which
//     case its bit is cleared and it moves to the head. Eviction stays
//     within the shard that needs room.
//   - Every successful mutation takes a new CAS from one store-wide counter,
//     so CAS values are unique and increase in the order of mutations.
//   - An item whose Exp is non-zero and <= now is dead: every operation
//     treats it as missing. Dead items are reclaimed when an operation finds
//     them, when eviction reaches them, and by the background sweeper.
//   - A delayed Flush is applied by the first operation (or sweeper tick)
//     that sees the clock at or past its time: that operation clears every
//     shard. Items stored before that moment, including those stored in the
//     flush's own second, are gone; items stored after it stay.
//
// Buffer ownership: Set, Arith and the other mutators copy the key and value
// they are given; callers keep their buffers. Get and GetAndTouch append a
// copy of the value to the caller's dst; the store never hands out its own
// memory.
package store

import (
	"errors"
	"fmt"
	"hash/maphash"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for zero Config fields.
const (
	DefaultMemoryLimit   = 64 << 20
	DefaultMaxItemSize   = 1 << 20
	DefaultShards        = 64
	DefaultSweepInterval = 60 * time.Second
)

// Bounds on Config fields.
const (
	// MaxKeySize is the longest key a Store accepts (the protocol's own
	// bound: a 16-bit key length).
	MaxKeySize = 1<<16 - 1
	// MaxMaxItemSize is the largest MaxItemSize New accepts.
	MaxMaxItemSize = 1 << 30
)

// minShardItems is the least ring a shard gets, in items of the largest
// size: New uses fewer shards than Config.Shards rather than give a shard
// less, so that one large item does not flush a whole shard.
const minShardItems = 4

// minSweepTick bounds how often the sweeper wakes, whatever SweepInterval
// and Shards say.
const minSweepTick = 100 * time.Microsecond

// Config configures a Store. The zero value is valid: New fills every zero
// field with its default.
type Config struct {
	// MemoryLimit is the most bytes of items (ItemSize each) the store
	// holds; stores beyond it evict. Default 64 MiB.
	MemoryLimit int64
	// MaxItemSize is the largest len(key)+len(value) accepted, at most
	// MaxMaxItemSize. Default 1 MiB.
	MaxItemSize int
	// Shards is the most independently locked shards, a power of two no
	// larger than 65536; New halves it while a shard would get less than
	// four items of MaxItemSize. Default 64.
	Shards int
	// SweepInterval is how long the background sweeper takes for one pass
	// over all shards; it visits one shard every SweepInterval/Shards (but
	// not more often than every 100µs). Default 60s; negative disables the
	// sweeper.
	SweepInterval time.Duration
	// Now returns the current Unix time in seconds. It must be safe for
	// concurrent use and must not block. Default time.Now().Unix.
	Now func() int64
}

// Meta is the metadata stored with an item.
type Meta struct {
	Flags    uint32
	DataType uint8
	Exp      int64 // absolute Unix seconds; 0 means the item never expires
	CAS      uint64
}

// Mode selects the store semantics of Set.
type Mode uint8

// Store modes, one per memcached storage command.
const (
	ModeSet Mode = iota
	ModeAdd
	ModeReplace
	ModeAppend
	ModePrepend
)

// Errors returned by Store methods.
var (
	ErrNotFound    = errors.New("store: not found")
	ErrExists      = errors.New("store: key exists") // ADD on an existing key, or CAS mismatch
	ErrNotStored   = errors.New("store: not stored") // APPEND/PREPEND on a missing key
	ErrTooLarge    = errors.New("store: item too large")
	ErrNoMemory    = errors.New("store: out of memory") // larger than a shard's whole ring
	ErrNonNumeric  = errors.New("store: non-numeric value")
	ErrInvalidMode = errors.New("store: invalid mode")
	ErrClosed      = errors.New("store: closed")
)

// Stats is a snapshot of a Store's counters. Each shard is read under its
// lock, so per-shard figures are consistent, but the snapshot as a whole is
// not taken at a single instant.
type Stats struct {
	CurrItems        uint64 // items held now, including dead ones not yet reclaimed
	TotalItems       uint64 // successful stores ever (Set, and Arith creating an item)
	Bytes            uint64 // bytes charged now (ItemSize per item)
	LimitMaxBytes    uint64 // Config.MemoryLimit
	Evictions        uint64 // live items removed to make room
	EvictedUnfetched uint64 // of those, never read
	ExpiredUnfetched uint64 // expired items reclaimed that were never read
	Reclaimed        uint64 // expired or flushed items whose memory was reclaimed
}

// Store is a sharded in-memory item store. All methods are safe for
// concurrent use. None blocks other than on shard locks, which are held for
// the duration of one index operation and a copy, or for an eviction or
// sweep of one shard.
type Store struct {
	shards  []shard
	mask    uint64
	seed    maphash.Seed
	limit   int64
	maxItem int
	ringCap int64 // bytes of each shard's ring
	now     func() int64

	flushAt atomic.Int64 // Unix time of a pending delayed Flush; 0 if none

	// Written by every store; kept off the cache line of the fields above,
	// which every Get reads.
	_   [64]byte
	cas atomic.Uint64 // last CAS handed out

	arena     []byte          // every shard's ring, one after another
	release   runtime.Cleanup // unmaps arena if the Store is dropped unclosed
	stop      chan struct{}   // closed by Close; nil if there is no sweeper
	sweeper   sync.WaitGroup
	closeOnce sync.Once
}

// New validates cfg, fills its zero fields with defaults and returns a
// Store. Unless cfg.SweepInterval is negative it starts the background
// sweeper goroutine. The caller must Close the Store to stop the sweeper
// and release its memory.
func New(cfg Config) (*Store, error) {
	if cfg.MemoryLimit < 0 {
		return nil, fmt.Errorf("store: negative MemoryLimit %d", cfg.MemoryLimit)
	}
	if cfg.MaxItemSize < 0 || cfg.MaxItemSize > MaxMaxItemSize {
		return nil, fmt.Errorf("store: MaxItemSize %d is not in [0, %d]", cfg.MaxItemSize, MaxMaxItemSize)
	}
	if cfg.Shards < 0 || cfg.Shards > 1<<16 || cfg.Shards&(cfg.Shards-1) != 0 {
		return nil, fmt.Errorf("store: Shards %d is not a power of two in [1, 65536]", cfg.Shards)
	}
	if cfg.MemoryLimit == 0 {
		cfg.MemoryLimit = DefaultMemoryLimit
	}
	if cfg.MaxItemSize == 0 {
		cfg.MaxItemSize = DefaultMaxItemSize
	}
	if cfg.Shards == 0 {
		cfg.Shards = DefaultShards
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.Now == nil {
		cfg.Now = func() int64 { return time.Now().Unix() }
	}
	n := cfg.Shards
	for n > 1 && cfg.MemoryLimit/int64(n) < minShardItems*ItemSize(0, cfg.MaxItemSize) {
		n /= 2
	}
	ringCap := cfg.MemoryLimit / int64(n) &^ (recordAlign - 1)
	if ringCap < recordAlign {
		return nil, fmt.Errorf("store: MemoryLimit %d is too small", cfg.MemoryLimit)
	}
	arena, err := mapArena(int(ringCap) * n)
	if err != nil {
		return nil, fmt.Errorf("store: reserving %d bytes: %w", ringCap*int64(n), err)
	}
	s := &Store{
		shards:  make([]shard, n),
		mask:    uint64(n - 1),
		seed:    maphash.MakeSeed(),
		limit:   cfg.MemoryLimit,
		maxItem: cfg.MaxItemSize,
		ringCap: ringCap,
		now:     cfg.Now,
		arena:   arena,
	}
	for i := range s.shards {
		s.shards[i].idx = make(map[uint64]uint32)
		s.shards[i].ring = arena[int64(i)*ringCap : int64(i+1)*ringCap : int64(i+1)*ringCap]
	}
	// A Store dropped without Close still gives its arena back.
	s.release = runtime.AddCleanup(s, unmapArena, arena)
	if cfg.SweepInterval > 0 {
		tick := max(cfg.SweepInterval/time.Duration(n), minSweepTick)
		s.stop = make(chan struct{})
		s.sweeper.Go(func() { s.sweepLoop(tick) })
	}
	return s, nil
}

// Close stops the background sweeper, waits for it to return and releases
// the store's memory. It is safe to call more than once and concurrently.
// After Close the store is empty: reads miss and writes fail with
// ErrClosed.
func (s *Store) Close() {
	s.closeOnce.Do(func() {
		if s.stop != nil {
			close(s.stop)
			s.sweeper.Wait()
		}
		for i := range s.shards {
			sh := &s.shards[i]
			sh.mu.Lock()
			sh.idx, sh.ring, sh.bytes = nil, nil, 0
			sh.mu.Unlock()
		}
		s.release.Stop()
		unmapArena(s.arena)
	})
}

// hash is the seeded 64-bit hash that picks a key's shard and index slot.
func (s *Store) hash(key []byte) uint64 { return maphash.Bytes(s.seed, key) }

// shardOf returns the shard of a key hash.
func (s *Store) shardOf(hash uint64) *shard { return &s.shards[hash&s.mask] }

// Get appends the value of key to dst and returns the extended slice, the
// item's metadata and true; on a miss it returns dst unchanged and false.
// An expired item is a miss and is reclaimed. Get takes only the shard's
// read lock on a hit and does not allocate if dst has room for the value.
// Like every operation, it first applies a delayed Flush that has come due,
// which takes every shard's write lock in turn.
func (s *Store) Get(key, dst []byte) ([]byte, Meta, bool) {
	s.applyDueFlush()
	hash := s.hash(key)
	sh := s.shardOf(hash)
	sh.mu.RLock()
	off, h := sh.find(hash, key)
	if h == nil {
		sh.mu.RUnlock()
		return dst, Meta{}, false
	}
	if s.expired(h) {
		sh.mu.RUnlock()
		// Upgrade: re-check under the write lock, as the item may have
		// been replaced or touched meanwhile.
		sh.mu.Lock()
		s.lookup(sh, hash, key)
		sh.mu.Unlock()
		return dst, Meta{}, false
	}
	h.markRead()
	dst = append(dst, sh.value(off, h)...)
	m := h.meta()
	sh.mu.RUnlock()
	return dst, m, true
}

// GetAndTouch is Get that also sets the item's expiration to exp (absolute
// Unix seconds, 0 = never). The CAS is unchanged, as in memcached. It takes
// the shard's write lock.
func (s *Store) GetAndTouch(key []byte, exp int64, dst []byte) ([]byte, Meta, bool) {
	var m Meta
	ok := s.touch(key, exp, func(v []byte, h *header) {
		h.markRead()
		dst, m = append(dst, v...), h.meta()
	})
	return dst, m, ok
}

// Touch sets the expiration of key to exp (absolute Unix seconds, 0 =
// never) and returns the item's metadata after the touch; the CAS is
// unchanged. An exp in the past makes the item invisible from then on.
func (s *Store) Touch(key []byte, exp int64) (Meta, bool) {
	var m Meta
	ok := s.touch(key, exp, func(_ []byte, h *header) {
		h.bits.Or(bitAccessed)
		m = h.meta()
	})
	return m, ok
}

// touch sets key's expiration to exp and calls fn with the item's value
// and header under the shard's write lock. It reports whether the key was
// there.
func (s *Store) touch(key []byte, exp int64, fn func(value []byte, h *header)) bool {
	s.applyDueFlush()
	hash := s.hash(key)
	sh := s.shardOf(hash)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	off, h := s.lookup(sh, hash, key)
	if h == nil {
		return false
	}
	h.exp = clampExp(exp)
	fn(sh.value(off, h), h)
	return true
}

// Set stores value under key according to mode and returns the item's new
// CAS. It copies key and value.
//
//   - ModeSet: stores unconditionally, unless cas != 0: then the item must
//     exist (else ErrNotFound) with that CAS (else ErrExists).
//   - ModeAdd: ErrExists if the key exists; cas is ignored.
//   - ModeReplace: ErrNotFound if the key is missing; cas as for ModeSet.
//   - ModeAppend, ModePrepend: ErrNotStored if the key is missing; cas as
//     for ModeSet. The value becomes old+value or value+old and the item
//     keeps its flags, data type and expiration (the arguments are ignored).
//
// ErrTooLarge if len(key) plus the final value's length exceeds
// MaxItemSize; ErrNoMemory if the item alone is larger than a shard's ring.
// An exp in the past (exp != 0 && exp <= now) removes the key and returns a
// fresh CAS, as memcached makes such an item immediately invisible. Set may
// evict other items of the key's shard to make room.
func (s *Store) Set(mode Mode, key, value []byte, flags uint32, dataType uint8, exp int64, cas uint64) (uint64, error) {
	if mode > ModePrepend {
		return 0, ErrInvalidMode
	}
	if err := s.checkSize(len(key), len(value)); err != nil {
		return 0, err
	}
	s.applyDueFlush()
	hash := s.hash(key)
	sh := s.shardOf(hash)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.ring == nil {
		return 0, ErrClosed
	}
	off, h := s.lookup(sh, hash, key)
	switch {
	case mode == ModeAdd && h != nil:
		return 0, ErrExists
	case h == nil && (mode == ModeReplace || mode == ModeSet && cas != 0):
		return 0, ErrNotFound
	case h == nil && (mode == ModeAppend || mode == ModePrepend):
		return 0, ErrNotStored
	case mode != ModeAdd && cas != 0 && h.cas != cas:
		return 0, ErrExists
	}
	// The value is a+b; see write.
	a, b := value, []byte(nil)
	if mode == ModeAppend || mode == ModePrepend {
		if mode == ModeAppend {
			a, b = sh.value(off, h), value
		} else {
			b = sh.value(off, h)
		}
		flags, dataType, exp = h.flags, h.dataType, int64(h.exp)
		if err := s.checkSize(len(key), len(a)+len(b)); err != nil {
			return 0, err
		}
	}
	newCAS := s.cas.Add(1)
	if s.past(exp) {
		if h != nil {
			sh.remove(hash, h)
		}
		return newCAS, nil
	}
	sh.stats.totalItems++
	s.put(sh, hash, off, h, key, a, b, Meta{Flags: flags, DataType: dataType, Exp: exp, CAS: newCAS})
	return newCAS, nil
}

// Delete removes key. It returns ErrNotFound if the key is missing and
// ErrExists if cas != 0 and differs from the item's CAS.
func (s *Store) Delete(key []byte, cas uint64) error {
	s.applyDueFlush()
	hash := s.hash(key)
	sh := s.shardOf(hash)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	_, h := s.lookup(sh, hash, key)
	switch {
	case h == nil:
		return ErrNotFound
	case cas != 0 && h.cas != cas:
		return ErrExists
	}
	sh.remove(hash, h)
	return nil
}

// Arith implements INCREMENT (incr) and DECREMENT and returns the new
// counter value and CAS.
//
// If key is missing: with create (and cas == 0) it stores initial as
// decimal ASCII with flags 0, data type 0 and expiration exp, and returns
// initial; otherwise ErrNotFound. If key exists, its value must be 1 to 20
// ASCII digits holding a uint64, else ErrNonNumeric; increment wraps at
// 2^64, decrement stops at 0, and the result is stored as decimal ASCII
// keeping the item's flags, data type and expiration. cas != 0 must match
// the item's CAS (ErrExists).
func (s *Store) Arith(key []byte, incr bool, delta, initial uint64, exp int64, create bool, cas uint64) (value, newCAS uint64, err error) {
	s.applyDueFlush()
	hash := s.hash(key)
	sh := s.shardOf(hash)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.ring == nil {
		return 0, 0, ErrClosed
	}
	off, h := s.lookup(sh, hash, key)
	var m Meta
	switch {
	case h == nil && (!create || cas != 0):
		return 0, 0, ErrNotFound
	case h == nil:
		value, m = initial, Meta{Exp: exp}
	case cas != 0 && h.cas != cas:
		return 0, 0, ErrExists
	default:
		old, ok := parseUint64(sh.value(off, h))
		switch {
		case !ok:
			return 0, 0, ErrNonNumeric
		case incr:
			value = old + delta
		case delta < old:
			value = old - delta
		}
		m = h.meta()
	}
	var buf [20]byte
	digits := strconv.AppendUint(buf[:0], value, 10)
	if err := s.checkSize(len(key), len(digits)); err != nil {
		return 0, 0, err
	}
	m.CAS = s.cas.Add(1)
	if h == nil && s.past(exp) {
		return value, m.CAS, nil
	}
	if h == nil {
		sh.stats.totalItems++
	}
	s.put(sh, hash, off, h, key, digits, nil, m)
	return value, m.CAS, nil
}

// parseUint64 parses 1 to 20 ASCII decimal digits that fit in a uint64.
func parseUint64(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (^uint64(0)-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// Flush invalidates every item. If at <= now it clears all shards at once
// and cancels any pending delayed flush. Otherwise it schedules a flush for
// time at, replacing any earlier pending one: the first operation or
// sweeper tick that sees the clock at or past at clears all shards, so
// every item stored before then is gone. Flush takes each shard's write
// lock in turn.
func (s *Store) Flush(at int64) {
	if at > s.now() {
		s.flushAt.Store(at)
		return
	}
	s.flushAt.Store(0)
	s.clearAll()
}

// applyDueFlush clears the store if a delayed Flush has come due. It reads
// the clock only when a flush is pending, and it holds no shard lock.
func (s *Store) applyDueFlush() {
	at := s.flushAt.Load()
	if at != 0 && s.now() >= at && s.flushAt.CompareAndSwap(at, 0) {
		s.clearAll()
	}
}

// clearAll empties every shard, counting the items as reclaimed.
func (s *Store) clearAll() {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		if sh.ring != nil {
			sh.clear()
		}
		sh.mu.Unlock()
	}
}

// Stats returns a snapshot of the counters. It takes each shard's read lock
// in turn.
func (s *Store) Stats() Stats {
	st := Stats{LimitMaxBytes: uint64(s.limit)}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		st.CurrItems += uint64(len(sh.idx))
		st.Bytes += uint64(sh.bytes)
		st.TotalItems += sh.stats.totalItems
		st.Evictions += sh.stats.evictions
		st.EvictedUnfetched += sh.stats.evictedUnfetched
		st.ExpiredUnfetched += sh.stats.expiredUnfetched
		st.Reclaimed += sh.stats.reclaimed
		sh.mu.RUnlock()
	}
	return st
}

// checkSize returns the error for an item with the given key and value
// lengths.
func (s *Store) checkSize(keyLen, valueLen int) error {
	switch {
	case keyLen+valueLen > s.maxItem || keyLen > MaxKeySize:
		return ErrTooLarge
	case ItemSize(keyLen, valueLen) > s.ringCap:
		return ErrNoMemory
	}
	return nil
}

// sweepLoop visits one shard per tick, round-robin, removing dead items,
// until Close. It holds the shard's write lock for the whole walk, which is
// linear in the shard's item count.
func (s *Store) sweepLoop(tick time.Duration) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for i := uint64(0); ; i = (i + 1) & s.mask {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.applyDueFlush()
		sh := &s.shards[i]
		now := s.now()
		sh.mu.Lock()
		for hash, i := range sh.idx {
			if h := sh.rec(uint64(i) * recordAlign); h.dead(now) {
				sh.reclaim(hash, h)
			}
		}
		sh.mu.Unlock()
	}
}
