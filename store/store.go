// Package store is the in-memory item store behind the cache server: a
// sharded map of key -> value with memcached binary-protocol semantics
// (SET/ADD/REPLACE/APPEND/PREPEND, CAS, INCR/DECR, TOUCH, GAT, FLUSH), a
// memory limit enforced by approximately-LRU eviction, and lazy plus
// background reclamation of expired items.
//
// Invariants:
//
//   - Keys are spread over a power-of-two number of shards by a per-Store
//     seeded hash. Each shard has its own sync.RWMutex; no lock covers the
//     whole store and no goroutine ever holds two shard locks at once.
//   - Every item in a shard's map is also on that shard's intrusive list,
//     except for the moment a writer holding the shard lock relinks it. The
//     list is in link order: the head was stored (or given a second chance)
//     most recently. Get does not reorder the list; it only sets the item's
//     "accessed" bit with an atomic, under the read lock.
//   - Bytes charged for an item are len(key)+len(value)+ItemOverhead. The
//     store-wide total is an atomic counter; after a store pushes it over
//     MemoryLimit the writer evicts, from its own shard first and then from
//     the others in turn, until it is back under the limit. So the total can
//     exceed the limit only while stores are in flight.
//   - Eviction is CLOCK-like second chance: the tail item is evicted unless
//     it was accessed since it was linked, in which case its bit is cleared
//     and it moves to the head.
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
//
// Design note: items live in a map[string]*entry whose string keys point
// into the item's single key+value allocation, which keeps the code simple
// and a store to a new key at two allocations (entry and data). The cost is
// that the garbage collector scans every item; a slab design with a
// pointer-free index (fastcache, bigcache) avoids that at the price of its
// own allocator and compaction.
package store

import (
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// ItemOverhead is the fixed number of bytes charged per item on top of
// len(key)+len(value): what an item costs on the heap beyond its key and
// value. That is the entry struct (72 bytes, an 80-byte size class) plus its
// share of the map: a 24-byte slot (string header and pointer) and a control
// byte, at a load factor between 7/16 (just after a table splits) and 7/8,
// so 29 to 57 bytes. The bound 80+57 = 137 is rounded up to a multiple of 8.
// Measured with runtime.MemStats (see TestItemOverhead) an item costs 115
// to 136 bytes on top of its data, depending on where the map is in its
// growth. Not included: the rounding of the key+value allocation up to its
// size class, which grows with the item (typically under 12.5% for
// items over 128 bytes).
const ItemOverhead = 144

// Defaults for zero Config fields.
const (
	DefaultMemoryLimit   = 64 << 20
	DefaultMaxItemSize   = 1 << 20
	DefaultShards        = 64
	DefaultSweepInterval = 60 * time.Second
)

// minSweepTick bounds how often the sweeper wakes, whatever SweepInterval
// and Shards say.
const minSweepTick = 100 * time.Microsecond

// Config configures a Store. The zero value is valid: New fills every zero
// field with its default.
type Config struct {
	// MemoryLimit is the most bytes of items charged (key + value +
	// ItemOverhead each) before stores evict. Default 64 MiB.
	MemoryLimit int64
	// MaxItemSize is the largest len(key)+len(value) accepted. Default 1 MiB.
	MaxItemSize int
	// Shards is the number of independently locked shards, a power of two
	// no larger than 65536. Default 64.
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
	ErrNoMemory    = errors.New("store: out of memory") // cannot make room even by evicting
	ErrNonNumeric  = errors.New("store: non-numeric value")
	ErrInvalidMode = errors.New("store: invalid mode")
)

// Stats is a snapshot of a Store's counters. Each shard is read under its
// lock, so per-shard figures are consistent, but the snapshot as a whole is
// not taken at a single instant.
type Stats struct {
	CurrItems        uint64 // items held now, including dead ones not yet reclaimed
	TotalItems       uint64 // successful stores ever (Set, and Arith creating an item)
	Bytes            uint64 // bytes charged now (key+value+ItemOverhead per item)
	LimitMaxBytes    uint64 // Config.MemoryLimit
	Evictions        uint64 // live items removed to make room
	EvictedUnfetched uint64 // of those, never read
	ExpiredUnfetched uint64 // expired items reclaimed that were never read
	Reclaimed        uint64 // expired or flushed items whose memory was reclaimed
}

// Store is a sharded in-memory item store. All methods are safe for
// concurrent use. None blocks other than on shard locks, which are held for
// the duration of one map operation and a copy, or for an eviction or
// sweep of one shard.
type Store struct {
	shards  []shard
	mask    uint64
	seed    maphash.Seed
	limit   int64
	maxItem int
	now     func() int64

	flushAt atomic.Int64 // Unix time of a pending delayed Flush; 0 if none

	// Written by every store; kept off the cache line of the fields above,
	// which every Get reads.
	_     [64]byte
	bytes atomic.Int64  // bytes charged, store-wide; compared with limit
	cas   atomic.Uint64 // last CAS handed out

	stop      chan struct{} // closed by Close; nil if there is no sweeper
	sweeper   sync.WaitGroup
	closeOnce sync.Once
}

// New validates cfg, fills its zero fields with defaults and returns a
// Store. Unless cfg.SweepInterval is negative it starts the background
// sweeper goroutine, which the caller must stop with Close.
func New(cfg Config) (*Store, error) {
	if cfg.MemoryLimit < 0 {
		return nil, fmt.Errorf("store: negative MemoryLimit %d", cfg.MemoryLimit)
	}
	if cfg.MaxItemSize < 0 {
		return nil, fmt.Errorf("store: negative MaxItemSize %d", cfg.MaxItemSize)
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
	s := &Store{
		shards:  make([]shard, cfg.Shards),
		mask:    uint64(cfg.Shards - 1),
		seed:    maphash.MakeSeed(),
		limit:   cfg.MemoryLimit,
		maxItem: cfg.MaxItemSize,
		now:     cfg.Now,
	}
	for i := range s.shards {
		s.shards[i].items = make(map[string]*entry)
	}
	if cfg.SweepInterval > 0 {
		tick := max(cfg.SweepInterval/time.Duration(cfg.Shards), minSweepTick)
		s.stop = make(chan struct{})
		s.sweeper.Go(func() { s.sweepLoop(tick) })
	}
	return s, nil
}

// Close stops the background sweeper and waits for it to return. It is safe
// to call more than once and concurrently. The Store stays usable after
// Close; only the background sweep stops.
func (s *Store) Close() {
	s.closeOnce.Do(func() {
		if s.stop != nil {
			close(s.stop)
			s.sweeper.Wait()
		}
	})
}

// shardFor returns the shard that owns key and its index.
func (s *Store) shardFor(key []byte) (*shard, uint64) {
	i := maphash.Bytes(s.seed, key) & s.mask
	return &s.shards[i], i
}

// dead reports whether e has expired at time now.
func dead(e *entry, now int64) bool { return e.exp != 0 && e.exp <= now }

// Get appends the value of key to dst and returns the extended slice, the
// item's metadata and true; on a miss it returns dst unchanged and false.
// An expired item is a miss and is reclaimed. Get takes only the shard's
// read lock on a hit and does not allocate if dst has room for the value.
// Like every operation, it first applies a delayed Flush that has come due,
// which takes every shard's write lock in turn.
func (s *Store) Get(key, dst []byte) ([]byte, Meta, bool) {
	s.applyDueFlush()
	sh, _ := s.shardFor(key)
	sh.mu.RLock()
	e := sh.items[string(key)]
	if e == nil {
		sh.mu.RUnlock()
		return dst, Meta{}, false
	}
	if e.exp != 0 && dead(e, s.now()) {
		sh.mu.RUnlock()
		// Upgrade: re-check under the write lock, as the item may have
		// been replaced or touched meanwhile.
		sh.mu.Lock()
		s.lookup(sh, key, s.now())
		sh.mu.Unlock()
		return dst, Meta{}, false
	}
	e.markRead()
	dst = append(dst, e.value()...)
	m := e.meta()
	sh.mu.RUnlock()
	return dst, m, true
}

// GetAndTouch is Get that also sets the item's expiration to exp (absolute
// Unix seconds, 0 = never). The CAS is unchanged, as in memcached. It takes
// the shard's write lock.
func (s *Store) GetAndTouch(key []byte, exp int64, dst []byte) ([]byte, Meta, bool) {
	now := s.now()
	s.applyDueFlush()
	sh, _ := s.shardFor(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := s.lookup(sh, key, now)
	if e == nil {
		return dst, Meta{}, false
	}
	e.exp = exp
	e.markRead()
	return append(dst, e.value()...), e.meta(), true
}

// Touch sets the expiration of key to exp (absolute Unix seconds, 0 =
// never) and returns the item's metadata after the touch; the CAS is
// unchanged. An exp in the past makes the item invisible from then on.
func (s *Store) Touch(key []byte, exp int64) (Meta, bool) {
	now := s.now()
	s.applyDueFlush()
	sh, _ := s.shardFor(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := s.lookup(sh, key, now)
	if e == nil {
		return Meta{}, false
	}
	e.exp = exp
	e.bits.Or(bitAccessed)
	return e.meta(), true
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
// MaxItemSize; ErrNoMemory if the item alone is larger than MemoryLimit.
// An exp in the past (exp != 0 && exp <= now) removes the key and returns a
// fresh CAS, as memcached makes such an item immediately invisible. Set may
// evict other items to stay within MemoryLimit.
func (s *Store) Set(mode Mode, key, value []byte, flags uint32, dataType uint8, exp int64, cas uint64) (uint64, error) {
	if mode > ModePrepend {
		return 0, ErrInvalidMode
	}
	if err := s.checkSize(len(key) + len(value)); err != nil {
		return 0, err
	}
	now := s.now()
	s.applyDueFlush()
	sh, idx := s.shardFor(key)
	sh.mu.Lock()
	e := s.lookup(sh, key, now)
	var err error
	switch {
	case mode == ModeAdd && e != nil:
		err = ErrExists
	case e == nil && (mode == ModeReplace || mode == ModeSet && cas != 0):
		err = ErrNotFound
	case e == nil && (mode == ModeAppend || mode == ModePrepend):
		err = ErrNotStored
	case mode != ModeAdd && cas != 0 && e.cas != cas:
		err = ErrExists
	}
	// The value is a+b; see entry.write.
	a, b := value, []byte(nil)
	if err == nil && (mode == ModeAppend || mode == ModePrepend) {
		if mode == ModeAppend {
			a, b = e.value(), value
		} else {
			b = e.value()
		}
		flags, dataType, exp = e.flags, e.dataType, e.exp
		err = s.checkSize(len(key) + len(a) + len(b))
	}
	if err != nil {
		sh.mu.Unlock()
		return 0, err
	}
	newCAS := s.cas.Add(1)
	if exp != 0 && exp <= now {
		if e != nil {
			s.remove(sh, e)
		}
		sh.mu.Unlock()
		return newCAS, nil
	}
	sh.stats.totalItems++
	over := s.put(sh, e, key, a, b, Meta{Flags: flags, DataType: dataType, Exp: exp, CAS: newCAS}, now)
	sh.mu.Unlock()
	if over {
		s.evictOthers(idx, now)
	}
	return newCAS, nil
}

// Delete removes key. It returns ErrNotFound if the key is missing and
// ErrExists if cas != 0 and differs from the item's CAS.
func (s *Store) Delete(key []byte, cas uint64) error {
	now := s.now()
	s.applyDueFlush()
	sh, _ := s.shardFor(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := s.lookup(sh, key, now)
	switch {
	case e == nil:
		return ErrNotFound
	case cas != 0 && e.cas != cas:
		return ErrExists
	}
	s.remove(sh, e)
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
	now := s.now()
	s.applyDueFlush()
	sh, idx := s.shardFor(key)
	sh.mu.Lock()
	e := s.lookup(sh, key, now)
	var m Meta
	switch {
	case e == nil && (!create || cas != 0):
		err = ErrNotFound
	case e == nil:
		value, m = initial, Meta{Exp: exp}
	case cas != 0 && e.cas != cas:
		err = ErrExists
	default:
		old, ok := parseUint64(e.value())
		switch {
		case !ok:
			err = ErrNonNumeric
		case incr:
			value = old + delta
		case delta < old:
			value = old - delta
		}
		m = e.meta()
	}
	var buf [20]byte
	digits := strconv.AppendUint(buf[:0], value, 10)
	if err == nil {
		err = s.checkSize(len(key) + len(digits))
	}
	if err != nil {
		sh.mu.Unlock()
		return 0, 0, err
	}
	m.CAS = s.cas.Add(1)
	if e == nil && exp != 0 && exp <= now {
		sh.mu.Unlock()
		return value, m.CAS, nil
	}
	if e == nil {
		sh.stats.totalItems++
	}
	over := s.put(sh, e, key, digits, nil, m, now)
	sh.mu.Unlock()
	if over {
		s.evictOthers(idx, now)
	}
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
		sh.stats.reclaimed += uint64(len(sh.items))
		s.bytes.Add(-sh.bytes)
		sh.bytes = 0
		sh.items = make(map[string]*entry)
		sh.head, sh.tail = nil, nil
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
		st.CurrItems += uint64(len(sh.items))
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

// checkSize returns the error for an item whose key and value total n bytes.
func (s *Store) checkSize(n int) error {
	switch {
	case n > s.maxItem:
		return ErrTooLarge
	case int64(n)+ItemOverhead > s.limit:
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
		for e := sh.tail; e != nil; {
			prev := e.prev
			if dead(e, now) {
				s.reclaim(sh, e)
			}
			e = prev
		}
		sh.mu.Unlock()
	}
}
