package vbucket

import (
	"errors"
	"fmt"
	"testing"
)

// The vectors of PROTOCOL.md: the 15-bit hash, the vbucket among 1024 and
// among 64.
var hashVectors = []struct {
	key          string
	hash         uint32
	vb1024, vb64 uint16
}{
	{"foo", 3187, 115, 51},
	{"hello", 13840, 528, 16},
	{"key-0", 31211, 491, 43},
	{"", 0, 0, 0},
	{"test_key", 29677, 1005, 45},
}

func TestHashGolden(t *testing.T) {
	for _, v := range hashVectors {
		t.Run(fmt.Sprintf("key=%q", v.key), func(t *testing.T) {
			if got := Hash([]byte(v.key)); got != v.hash {
				t.Errorf("Hash = %d, want %d", got, v.hash)
			}
			if got := VBucket([]byte(v.key), 1024); got != v.vb1024 {
				t.Errorf("VBucket(1024) = %d, want %d", got, v.vb1024)
			}
			if got := VBucket([]byte(v.key), 64); got != v.vb64 {
				t.Errorf("VBucket(64) = %d, want %d", got, v.vb64)
			}
			if got := VBucket([]byte(v.key), MaxVBuckets); uint32(got) != v.hash {
				t.Errorf("VBucket(MaxVBuckets) = %d, want the hash %d", got, v.hash)
			}
		})
	}
}

func TestVBucketAllocs(t *testing.T) {
	key := []byte("some-key-of-moderate-length")
	if a := testing.AllocsPerRun(100, func() { VBucket(key, DefaultVBuckets) }); a != 0 {
		t.Errorf("VBucket allocates %v times a call", a)
	}
}

func TestCheckCount(t *testing.T) {
	for _, tc := range []struct {
		n  int
		ok bool
	}{
		{1, true}, {2, true}, {64, true}, {1024, true}, {MaxVBuckets, true},
		{0, false}, {-1, false}, {-1024, false}, {3, false}, {1000, false},
		{2 * MaxVBuckets, false}, {MaxVBuckets + 1, false},
	} {
		t.Run(fmt.Sprint(tc.n), func(t *testing.T) {
			err := CheckCount(tc.n)
			if (err == nil) != tc.ok {
				t.Fatalf("CheckCount(%d) = %v, want ok=%v", tc.n, err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrBadCount) {
				t.Fatalf("CheckCount(%d) = %v, not ErrBadCount", tc.n, err)
			}
		})
	}
}

func BenchmarkVBucket(b *testing.B) {
	key := []byte("user:1234567890")
	b.ReportAllocs()
	for b.Loop() {
		VBucket(key, DefaultVBuckets)
	}
}
