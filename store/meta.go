package store

import (
	"bytes"
	"runtime"
)

// Operations for copying items between nodes (replication and vbucket
// moves). An item copied keeps its CAS, flags, data type and absolute
// expiration. Receivers apply "newest wins" by CAS: a copy never replaces
// an item with a CAS at or above its own. Every CAS a store applies raises
// its own counter to at least that value, so a node that takes over a
// vbucket hands out CAS values above every one it has received.

// SetWithMeta stores key = value with meta m (including its CAS) unless the
// store holds the key with a CAS above m.CAS, or with m.CAS itself and the
// same expiration (a copy of the same write; one with another expiration
// carries a TOUCH, which keeps the CAS). It reports whether it stored. An
// expiration in the past removes an older item instead. Errors are those of
// Set: ErrTooLarge, ErrNoMemory, ErrClosed.
func (s *Store) SetWithMeta(key, value []byte, m Meta) (bool, error) {
	if err := s.checkSize(len(key), len(value)); err != nil {
		return false, err
	}
	s.applyDueFlush()
	s.raiseCAS(m.CAS)
	hash := s.hash(key)
	sh := s.shardOf(hash)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.ring == nil {
		return false, ErrClosed
	}
	off, h := s.lookup(sh, hash, key)
	if h != nil && (h.cas > m.CAS || h.cas == m.CAS && h.exp == clampExp(m.Exp)) {
		return false, nil
	}
	if s.past(m.Exp) {
		if h != nil {
			sh.remove(hash, h)
		}
		return true, nil
	}
	sh.stats.totalItems++
	s.put(sh, hash, off, h, key, value, nil, m)
	return true, nil
}

// DeleteWithMeta removes key if the store holds it with a CAS below cas
// (the CAS of the deletion on the node that made it). It reports whether
// it removed anything.
func (s *Store) DeleteWithMeta(key []byte, cas uint64) bool {
	s.applyDueFlush()
	s.raiseCAS(cas)
	hash := s.hash(key)
	sh := s.shardOf(hash)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	_, h := s.lookup(sh, hash, key)
	if h == nil || h.cas >= cas {
		return false
	}
	sh.remove(hash, h)
	return true
}

// NextCAS takes a fresh CAS from the store's counter, for a mutation that
// stores nothing (a deletion that must be ordered against later copies).
func (s *Store) NextCAS() uint64 { return s.cas.Add(1) }

// raiseCAS lifts the CAS counter to at least cas.
func (s *Store) raiseCAS(cas uint64) {
	for {
		cur := s.cas.Load()
		if cur >= cas || s.cas.CompareAndSwap(cur, cas) {
			return
		}
	}
}

// Keys calls fn with a copy of every live key for which match reports true,
// shard by shard; fn may use the store (each shard's read lock is released
// before fn runs for its keys). It stops early if fn returns false.
// Keys stored or removed during the walk may or may not be seen.
func (s *Store) Keys(match func(key []byte) bool, fn func(key []byte) bool) {
	var keys [][]byte
	for i := range s.shards {
		sh := &s.shards[i]
		now := s.now()
		keys = keys[:0]
		sh.mu.RLock()
		for _, i := range sh.idx {
			off := uint64(i) * recordAlign
			h := sh.rec(off)
			if k := sh.key(off, h); !h.dead(now) && match(k) {
				keys = append(keys, bytes.Clone(k))
			}
		}
		sh.mu.RUnlock()
		for _, k := range keys {
			if !fn(k) {
				return
			}
		}
		runtime.Gosched() // see yieldNote
	}
}

// yieldNote: the walks over every shard (Keys, DeleteWhere) yield the
// processor after each shard. A walk of a large store takes tens of
// milliseconds, and a node may run on one P (cmd/node's -procs): its event
// loop would otherwise wait until the runtime preempts the walk, which can
// take longer than the usual 10 ms when the runtime's monitor thread sleeps
// (server/rawio_linux.go).

// GetWithMeta appends key's value to dst like Get, without marking the
// item as read (a copy for another node is not a client's fetch).
func (s *Store) GetWithMeta(key, dst []byte) ([]byte, Meta, bool) {
	hash := s.hash(key)
	sh := s.shardOf(hash)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	off, h := sh.find(hash, key)
	if h == nil || s.expired(h) {
		return dst, Meta{}, false
	}
	return append(dst, sh.value(off, h)...), h.meta(), true
}

// DeleteWhere removes every item whose key match reports true and returns
// how many it removed. It takes each shard's write lock in turn.
func (s *Store) DeleteWhere(match func(key []byte) bool) int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for hash, i := range sh.idx {
			off := uint64(i) * recordAlign
			if h := sh.rec(off); match(sh.key(off, h)) {
				sh.remove(hash, h)
				n++
			}
		}
		sh.mu.Unlock()
		runtime.Gosched() // see yieldNote
	}
	return n
}
