package main

import (
	"math"
	"testing"
	"time"
)

func TestBucketsAreContiguous(t *testing.T) {
	var prevHi uint64
	for i := range numBuckets {
		lo, hi := bucketBounds(i)
		if i > 0 && lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, lo, prevHi)
		}
		if bucketOf(lo) != i || bucketOf(hi) != i {
			t.Fatalf("bucket %d [%d, %d]: bucketOf gives %d and %d", i, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		if i >= 2*subBuckets && float64(hi-lo+1)/float64(lo) > 1.0/subBuckets {
			t.Fatalf("bucket %d [%d, %d] wider than 1/%d of its values", i, lo, hi, subBuckets)
		}
		prevHi = hi
	}
	if prevHi != maxValue {
		t.Fatalf("last bucket ends at %d, want maxValue %d", prevHi, maxValue)
	}
	if got := bucketOf(math.MaxUint64); got != numBuckets-1 {
		t.Fatalf("bucketOf(MaxUint64) = %d, want the last bucket", got)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	uniform := func(n int) []time.Duration { // 1µs .. n µs
		d := make([]time.Duration, n)
		for i := range d {
			d[i] = time.Duration(i+1) * time.Microsecond
		}
		return d
	}
	tests := []struct {
		name    string
		samples []time.Duration
		q       float64
		want    time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"single", []time.Duration{42 * time.Microsecond}, 0.5, 42 * time.Microsecond},
		{"single p999 clamps to max", []time.Duration{42 * time.Microsecond}, 0.999, 42 * time.Microsecond},
		{"small values are exact", []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 0.5, 5},
		{"negative counts as zero", []time.Duration{-5}, 0.5, 0},
		{"uniform p50", uniform(100000), 0.50, 50 * time.Millisecond},
		{"uniform p99", uniform(100000), 0.99, 99 * time.Millisecond},
		{"uniform p999", uniform(100000), 0.999, 99900 * time.Microsecond},
		{"uniform p100 is max", uniform(100000), 1, 100 * time.Millisecond},
		{"uniform p0 is min", uniform(100000), 0, time.Microsecond},
		{"outlier p99", append(uniform(99), time.Second), 0.99, 99 * time.Microsecond},
		{"outlier p999", append(uniform(999), time.Second), 0.999, 999 * time.Microsecond},
		{"outlier beyond range", append(uniform(9), time.Hour), 1, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Histogram
			for _, d := range tt.samples {
				h.Record(d)
			}
			got := h.Quantile(tt.q)
			// Quantiles are rounded up to the top of their bucket: at most
			// 1/subBuckets above the true value, never below it.
			if got < tt.want || float64(got-tt.want) > float64(tt.want)/subBuckets {
				t.Errorf("Quantile(%g) = %v, want %v (+%.1f%%)", tt.q, got, tt.want, 100.0/subBuckets)
			}
		})
	}
}

func TestHistogramMerge(t *testing.T) {
	var a, b, all Histogram
	for i := 1; i <= 1000; i++ {
		d := time.Duration(i) * time.Microsecond
		all.Record(d)
		if i%3 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	var merged Histogram
	merged.Merge(&a)
	merged.Merge(&b)
	merged.Merge(&Histogram{})
	if merged != all {
		t.Fatalf("merge of parts differs from the whole: count %d/%d max %v/%v",
			merged.Count(), all.Count(), merged.Max(), all.Max())
	}
	if got, want := merged.Mean(), 500500*time.Nanosecond; got != want {
		t.Errorf("Mean = %v, want %v", got, want)
	}
}

func TestHistogramRecordDoesNotAllocate(t *testing.T) {
	h := new(Histogram)
	if n := testing.AllocsPerRun(1000, func() { h.Record(123 * time.Microsecond) }); n != 0 {
		t.Errorf("Record allocates %v times per call", n)
	}
}
