// Package vbucket maps keys to vbuckets and vbuckets to servers: the key
// hash every Couchbase client uses, the versioned cluster map, the placement
// that computes a map from a member set, and the bucket config JSON that
// clients read the map from.
//
// Invariants:
//
//   - A key's vbucket is (crc32.ChecksumIEEE(key) >> 16) & 0x7fff & (n-1),
//     where n, the vbucket count, is a power of two in [1, MaxVBuckets] that
//     never changes for the life of a cluster.
//   - A Map row holds Replicas+1 server indices, active first; -1 means none;
//     no server appears twice in a row. Forward, when set, has the same
//     shape. Validate checks all of this.
//   - Rev orders maps cluster-wide: a newer map has a higher Rev. This package
//     never changes a Rev; the author of a map chooses it.
//   - Place depends only on the set of member names, n and the replica
//     count, never on the order of the names, so every node that computes it
//     from the same member set gets the same rows.
//   - Place gives every member between 90% and 110% of n/members active
//     vbuckets (widened to the floor and ceiling of n/members when that band
//     holds no integer). Replica positions get the same band as far as the
//     members already in each row allow.
//
// Concurrency: the package keeps no state. Functions are safe for concurrent
// use. A Map is a plain value: its methods only read it, so any number of
// goroutines may use one Map as long as nobody modifies it; treat a Map as
// immutable once it has been shared.
//
// Design note on placement. Active owners come from
// github.com/buraksezer/consistent (xxhash, one partition per vbucket, owner
// = GetPartitionOwner), tuned (ReplicationFactor 500, Load 1.15) and then
// corrected deterministically into the ±10% band (ring.go): with
// consistent alone, no setting both kept every member within 10% and moved
// at most 1.3 times the ideal on a join (TestConsistentBaseline prints its
// figures; TestPlaceBalance and TestPlaceMovement print ours). Replica
// positions do not use consistent's GetClosestNForPartition, which ranks
// members by the hash of their names, not per partition, so all of a
// member's vbuckets would share one replica and a failover would double one
// node's load; they are filled by rendezvous hashing under capacities
// (place.go), which spreads each member's replicas over all the others.
package vbucket

import (
	"errors"
	"fmt"
	"hash/crc32"
)

// DefaultVBuckets is the vbucket count Couchbase uses.
const DefaultVBuckets = 1024

// MaxVBuckets is the largest vbucket count: the key hash has 15 bits.
const MaxVBuckets = 32768

// MaxReplicas is the most replica copies a map may have, as in Couchbase.
const MaxReplicas = 3

// Errors returned by this package, wrapped with details; test with errors.Is.
var (
	ErrBadCount    = errors.New("vbucket: bad vbucket count")
	ErrBadReplicas = errors.New("vbucket: bad replica count")
	ErrNoMembers   = errors.New("vbucket: no members")
	ErrDuplicate   = errors.New("vbucket: duplicate member name")
	ErrInvalidMap  = errors.New("vbucket: invalid map")
)

// Hash returns the 15-bit Couchbase key hash:
// (crc32.ChecksumIEEE(key) >> 16) & 0x7fff. It does not allocate.
func Hash(key []byte) uint32 {
	return (crc32.ChecksumIEEE(key) >> 16) & 0x7fff
}

// VBucket returns the vbucket of key among n: Hash(key) & (n-1). n must be
// a power of two in [1, MaxVBuckets] (see CheckCount); it is not checked
// here. VBucket does not allocate.
func VBucket(key []byte, n int) uint16 {
	return uint16(Hash(key) & uint32(n-1))
}

// CheckPartners returns nil if partners is a valid bound on the members
// holding one member's replicas (see Place) for replicas replica copies: 0
// (every other member) or at least replicas. Otherwise it returns an error
// wrapping ErrBadReplicas that says why.
func CheckPartners(replicas, partners int) error {
	if partners < 0 || partners > 0 && partners < replicas {
		return fmt.Errorf("%w: %d replica partners for %d replicas; want 0 (every other member) or at least the replicas",
			ErrBadReplicas, partners, replicas)
	}
	return nil
}

// CheckCount returns nil if n is a power of two in [1, MaxVBuckets], else an
// error wrapping ErrBadCount that says why.
func CheckCount(n int) error {
	switch {
	case n < 1 || n > MaxVBuckets:
		return fmt.Errorf("%w: %d is outside [1, %d]", ErrBadCount, n, MaxVBuckets)
	case n&(n-1) != 0:
		return fmt.Errorf("%w: %d is not a power of two", ErrBadCount, n)
	}
	return nil
}
