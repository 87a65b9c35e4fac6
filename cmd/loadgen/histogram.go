package main

import (
	"math"
	"math/bits"
	"time"
)

// Histogram layout: values are nanoseconds. Values below 2*subBuckets are
// counted exactly; above that every power of two is split into subBuckets
// equal buckets, so a bucket is never wider than 1/subBuckets (1.6%) of the
// values it holds. Values at or above maxValue are counted in the last bucket.
const (
	subBits    = 6
	subBuckets = 1 << subBits
	maxShift   = 36 - subBits // values up to 2^37 ns (about 137 s)
	numBuckets = (maxShift + 2) * subBuckets
	maxValue   = uint64(1)<<(maxShift+subBits+1) - 1
)

// Histogram counts latencies in fixed log-linear buckets. Recording does not
// allocate and its memory is constant (numBuckets counters), whatever the
// number of samples. The zero value is ready to use. A Histogram is not safe
// for concurrent use: give each goroutine its own and Merge them afterwards.
type Histogram struct {
	counts   [numBuckets]uint64
	n        uint64
	sum      uint64 // nanoseconds; overflows only after ~584 years of latency
	min, max uint64
}

// bucketOf returns the index of the bucket that counts v.
func bucketOf(v uint64) int {
	if v > maxValue {
		v = maxValue
	}
	shift := bits.Len64(v) - subBits - 1
	if shift < 0 {
		shift = 0
	}
	return shift*subBuckets + int(v>>uint(shift))
}

// bucketBounds returns the smallest and largest value counted by bucket i.
func bucketBounds(i int) (lo, hi uint64) {
	if i < 2*subBuckets {
		return uint64(i), uint64(i)
	}
	shift := i/subBuckets - 1
	mantissa := uint64(i - shift*subBuckets)
	lo = mantissa << uint(shift)
	return lo, lo + 1<<uint(shift) - 1
}

// Record counts one latency. Negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := uint64(0)
	if d > 0 {
		v = uint64(d)
	}
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += v
}

// Merge adds every sample of o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// Count returns the number of samples recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Max returns the largest sample recorded, exactly.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean returns the mean of the samples, exactly.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / h.n)
}

// Quantile returns the smallest value v such that at least a fraction q of
// the samples are <= v, rounded up to the top of v's bucket (so it
// overstates by at most 1/subBuckets) and clamped to the recorded minimum and
// maximum (so a quantile in the last, open-ended bucket is the maximum). It
// returns 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	rank = min(rank, h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			_, hi := bucketBounds(i)
			if i == numBuckets-1 {
				hi = h.max // the last bucket also holds everything above maxValue
			}
			return time.Duration(min(max(hi, h.min), h.max))
		}
	}
	return time.Duration(h.max) // unreachable: the counts sum to n
}
