package store

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is a fake Config.Now.
type clock struct{ t atomic.Int64 }

func newClock(t int64) *clock      { c := &clock{}; c.t.Store(t); return c }
func (c *clock) Now() int64        { return c.t.Load() }
func (c *clock) Advance(d int64)   { c.t.Add(d) }
func (c *clock) Set(t int64) int64 { c.t.Store(t); return t }

const t0 = 1_000_000

// newTestStore returns a Store without a sweeper and with a fake clock at t0.
func newTestStore(t testing.TB, cfg Config) (*Store, *clock) {
	t.Helper()
	c := newClock(t0)
	if cfg.Now == nil {
		cfg.Now = c.Now
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = -1
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, c
}

// checkInvariants walks every shard's ring from tail to head and checks the
// records, the index and the byte totals against each other.
func checkInvariants(t testing.TB, s *Store) {
	t.Helper()
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		c := uint64(len(sh.ring))
		if sh.head < sh.tail || sh.head-sh.tail > c {
			t.Fatalf("shard %d: head %d, tail %d, ring %d", i, sh.head, sh.tail, c)
		}
		live, bytes := 0, int64(0)
		pos := sh.tail
		for pos < sh.head {
			off := pos % c
			size, bits := sh.recordAt(off)
			if size == 0 || size%recordAlign != 0 || off+uint64(size) > c {
				t.Fatalf("shard %d: record at %d has size %d (ring %d)", i, off, size, c)
			}
			if bits&bitPad == 0 {
				h := sh.rec(off)
				if ItemSize(int(h.klen), int(h.vlen)) != int64(size) {
					t.Fatalf("shard %d: record at %d: size %d for key %d + value %d", i, off, size, h.klen, h.vlen)
				}
				hash := s.hash(sh.key(off, h))
				if x, ok := sh.idx[hash]; ok && uint64(x)*recordAlign == off {
					if hash&s.mask != uint64(i) {
						t.Fatalf("shard %d holds key %q of shard %d", i, sh.key(off, h), hash&s.mask)
					}
					live++
					bytes += int64(size)
				}
			}
			pos += uint64(size)
		}
		if pos != sh.head {
			t.Fatalf("shard %d: records end at %d, head is %d", i, pos, sh.head)
		}
		if live != len(sh.idx) || bytes != sh.bytes {
			t.Fatalf("shard %d: ring has %d live records of %d bytes; index %d items, charged %d bytes", i, live, bytes, len(sh.idx), sh.bytes)
		}
		sh.mu.RUnlock()
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"zero config", Config{}, false},
		{"one shard", Config{Shards: 1}, false},
		{"negative limit", Config{MemoryLimit: -1}, true},
		{"negative max item", Config{MaxItemSize: -1}, true},
		{"shards not power of two", Config{Shards: 3}, true},
		{"negative shards", Config{Shards: -4}, true},
		{"too many shards", Config{Shards: 1 << 17}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("New(%+v) error = %v, want error %v", tt.cfg, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			defer s.Close()
			if got := s.Stats().LimitMaxBytes; got != DefaultMemoryLimit {
				t.Errorf("LimitMaxBytes = %d, want %d", got, DefaultMemoryLimit)
			}
		})
	}
}

// casArg says which CAS a test case passes.
type casArg int

const (
	noCAS    casArg = iota
	rightCAS        // the current item's CAS
	wrongCAS        // a CAS the item does not have
)

// expNow in a test table stands for an expiration equal to the clock's time.
const expNow = math.MinInt64

func TestSet(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name      string
		missing   bool // no item "k" (value "old", flags 7) before the call
		mode      Mode
		value     []byte
		exp       int64 // relative to the clock; 0 = never, expNow = the clock's time
		cas       casArg
		wantErr   error
		wantValue string // "" = key must be missing afterwards
		wantFlags uint32
	}{
		{"set new", true, ModeSet, []byte("v"), 0, noCAS, nil, "v", 1},
		{"set overwrite", false, ModeSet, []byte("v"), 0, noCAS, nil, "v", 1},
		{"set cas match", false, ModeSet, []byte("v"), 0, rightCAS, nil, "v", 1},
		{"set cas mismatch", false, ModeSet, []byte("v"), 0, wrongCAS, ErrExists, "old", 7},
		{"set cas missing", true, ModeSet, []byte("v"), 0, wrongCAS, ErrNotFound, "", 0},
		{"set past exp removes", false, ModeSet, []byte("v"), -1, noCAS, nil, "", 0},
		{"set exp now removes", false, ModeSet, []byte("v"), expNow, noCAS, nil, "", 0},
		{"set future exp", false, ModeSet, []byte("v"), 10, noCAS, nil, "v", 1},
		{"add new", true, ModeAdd, []byte("v"), 0, noCAS, nil, "v", 1},
		{"add existing", false, ModeAdd, []byte("v"), 0, noCAS, ErrExists, "old", 7},
		{"add ignores cas", true, ModeAdd, []byte("v"), 0, wrongCAS, nil, "v", 1},
		{"replace existing", false, ModeReplace, []byte("v"), 0, noCAS, nil, "v", 1},
		{"replace missing", true, ModeReplace, []byte("v"), 0, noCAS, ErrNotFound, "", 0},
		{"replace cas match", false, ModeReplace, []byte("v"), 0, rightCAS, nil, "v", 1},
		{"replace cas mismatch", false, ModeReplace, []byte("v"), 0, wrongCAS, ErrExists, "old", 7},
		{"append", false, ModeAppend, []byte("+a"), 0, noCAS, nil, "old+a", 7},
		{"append keeps exp", false, ModeAppend, []byte("+a"), -1, noCAS, nil, "old+a", 7},
		{"append missing", true, ModeAppend, []byte("+a"), 0, noCAS, ErrNotStored, "", 0},
		{"append cas match", false, ModeAppend, []byte("+a"), 0, rightCAS, nil, "old+a", 7},
		{"append cas mismatch", false, ModeAppend, []byte("+a"), 0, wrongCAS, ErrExists, "old", 7},
		{"prepend", false, ModePrepend, []byte("p+"), 0, noCAS, nil, "p+old", 7},
		{"prepend missing", true, ModePrepend, []byte("p+"), 0, noCAS, ErrNotStored, "", 0},
		{"prepend cas mismatch", false, ModePrepend, []byte("p+"), 0, wrongCAS, ErrExists, "old", 7},
		{"too large", false, ModeSet, make([]byte, mib), 0, noCAS, ErrTooLarge, "old", 7},
		{"at max size", false, ModeSet, make([]byte, mib-1), 0, noCAS, nil, string(make([]byte, mib-1)), 1},
		{"append too large", false, ModeAppend, make([]byte, mib-3), 0, noCAS, ErrTooLarge, "old", 7},
		{"prepend too large", false, ModePrepend, make([]byte, mib-3), 0, noCAS, ErrTooLarge, "old", 7},
		{"invalid mode", false, ModePrepend + 1, []byte("v"), 0, noCAS, ErrInvalidMode, "old", 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, clk := newTestStore(t, Config{MemoryLimit: 4 * mib, MaxItemSize: mib})
			key := []byte("k")
			var oldCAS uint64
			if !tt.missing {
				var err error
				if oldCAS, err = s.Set(ModeSet, key, []byte("old"), 7, 0, 0, 0); err != nil {
					t.Fatal(err)
				}
			}
			var cas uint64
			switch tt.cas {
			case rightCAS:
				cas = oldCAS
			case wrongCAS:
				cas = oldCAS + 100
			}
			exp := tt.exp
			switch exp {
			case 0:
			case expNow:
				exp = clk.Now()
			default:
				exp += clk.Now()
			}
			newCAS, err := s.Set(tt.mode, key, tt.value, 1, 0, exp, cas)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Set error = %v, want %v", err, tt.wantErr)
			}
			if err == nil && newCAS <= oldCAS {
				t.Errorf("new CAS %d not above old CAS %d", newCAS, oldCAS)
			}
			got, m, ok := s.Get(key, nil)
			switch {
			case tt.wantValue == "" && ok:
				t.Fatalf("Get = %q, want miss", got)
			case tt.wantValue == "":
			case !ok || string(got) != tt.wantValue || m.Flags != tt.wantFlags:
				t.Fatalf("Get = %q flags %d found %v, want %q flags %d", got, m.Flags, ok, tt.wantValue, tt.wantFlags)
			case err == nil && m.CAS != newCAS:
				t.Errorf("Get CAS = %d, Set returned %d", m.CAS, newCAS)
			case err != nil && m.CAS != oldCAS:
				t.Errorf("failed Set changed CAS %d -> %d", oldCAS, m.CAS)
			}
			checkInvariants(t, s)
		})
	}
}

func TestSetLimits(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		mode    Mode
		size    int // len(key)+len(value); the key is "k"
		wantErr error
	}{
		{"fits", Config{MemoryLimit: 1000, MaxItemSize: 1000}, ModeSet, 1000 - ItemOverhead, nil},
		{"larger than memory", Config{MemoryLimit: 1000, MaxItemSize: 1000}, ModeSet, 1001 - ItemOverhead, ErrNoMemory},
		{"add larger than memory", Config{MemoryLimit: 1000, MaxItemSize: 1000}, ModeAdd, 1001 - ItemOverhead, ErrNoMemory},
		{"too large before no memory", Config{MemoryLimit: 1000, MaxItemSize: 500}, ModeSet, 1001, ErrTooLarge},
		{"append larger than memory", Config{MemoryLimit: 1000, MaxItemSize: 1000}, ModeAppend, 1000 - ItemOverhead, ErrNoMemory},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newTestStore(t, tt.cfg)
			key := []byte("k")
			if tt.mode == ModeAppend {
				s.Set(ModeSet, key, []byte("x"), 0, 0, 0, 0)
			}
			_, err := s.Set(tt.mode, key, make([]byte, tt.size-1), 0, 0, 0, 0)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Set = %v, want %v", err, tt.wantErr)
			}
			if st := s.Stats(); st.Bytes > st.LimitMaxBytes {
				t.Fatalf("Bytes %d over limit %d", st.Bytes, st.LimitMaxBytes)
			}
		})
	}
}

func TestSetCopiesBuffers(t *testing.T) {
	s, _ := newTestStore(t, Config{})
	key, val := []byte("key"), []byte("value")
	if _, err := s.Set(ModeSet, key, val, 0, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	copy(key, "xxx")
	copy(val, "XXXXX")
	if got, _, ok := s.Get([]byte("key"), nil); !ok || string(got) != "value" {
		t.Fatalf("Get = %q %v after caller reused buffers", got, ok)
	}
}

func TestAppendPrependKeepMeta(t *testing.T) {
	s, clk := newTestStore(t, Config{})
	key := []byte("k")
	exp := clk.Now() + 50
	if _, err := s.Set(ModeSet, key, []byte("mid"), 0xdead, 1, exp, 0); err != nil {
		t.Fatal(err)
	}
	// Growing in place and reallocating must both keep the old bytes.
	for i := range 20 {
		if _, err := s.Set(ModeAppend, key, []byte(">"), 9, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Set(ModePrepend, key, []byte("<"), 9, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
		want := strings.Repeat("<", i+1) + "mid" + strings.Repeat(">", i+1)
		got, m, ok := s.Get(key, nil)
		if !ok || string(got) != want {
			t.Fatalf("round %d: Get = %q, want %q", i, got, want)
		}
		if m.Flags != 0xdead || m.DataType != 1 || m.Exp != exp {
			t.Fatalf("round %d: meta = %+v, want flags 0xdead datatype 1 exp %d", i, m, exp)
		}
	}
	checkInvariants(t, s)
}

// TestRewriteInPlace covers stores that reuse the item's buffer: a value
// that shrinks a little, then grows back into the spare capacity.
func TestRewriteInPlace(t *testing.T) {
	tests := []struct {
		name  string
		mode  Mode
		value string
		want  string
	}{
		{"set", ModeSet, "12345678", "12345678"},
		{"append", ModeAppend, "X", "abcdefgX"},
		{"prepend", ModePrepend, "X", "Xabcdefg"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newTestStore(t, Config{})
			key := []byte("k")
			s.Set(ModeSet, key, []byte("abcdefgh"), 0, 0, 0, 0)
			s.Set(ModeSet, key, []byte("abcdefg"), 0, 0, 0, 0)
			if _, err := s.Set(tt.mode, key, []byte(tt.value), 0, 0, 0, 0); err != nil {
				t.Fatal(err)
			}
			if got, _, _ := s.Get(key, nil); string(got) != tt.want {
				t.Fatalf("Get = %q, want %q", got, tt.want)
			}
			checkInvariants(t, s)
		})
	}
}

func TestArith(t *testing.T) {
	tests := []struct {
		name      string
		stored    string // "" = missing
		incr      bool
		delta     uint64
		initial   uint64
		create    bool
		cas       casArg
		want      uint64
		wantErr   error
		wantValue string // value afterwards; "" = missing
	}{
		{"incr missing", "", true, 1, 5, false, noCAS, 0, ErrNotFound, ""},
		{"incr create", "", true, 1, 5, true, noCAS, 5, nil, "5"},
		{"decr create", "", false, 1, 5, true, noCAS, 5, nil, "5"},
		{"create with cas", "", true, 1, 5, true, wrongCAS, 0, ErrNotFound, ""},
		{"incr", "10", true, 5, 0, false, noCAS, 15, nil, "15"},
		{"incr ignores initial", "10", true, 5, 99, true, noCAS, 15, nil, "15"},
		{"incr leading zeros", "007", true, 1, 0, false, noCAS, 8, nil, "8"},
		{"incr wraps", "18446744073709551615", true, 1, 0, false, noCAS, 0, nil, "0"},
		{"incr wraps past zero", "18446744073709551615", true, 3, 0, false, noCAS, 2, nil, "2"},
		{"incr max delta", "1", true, 1<<64 - 1, 0, false, noCAS, 0, nil, "0"},
		{"decr", "10", false, 3, 0, false, noCAS, 7, nil, "7"},
		{"decr to zero", "10", false, 10, 0, false, noCAS, 0, nil, "0"},
		{"decr floors at zero", "3", false, 10, 0, false, noCAS, 0, nil, "0"},
		{"non-numeric", "abc", true, 1, 0, false, noCAS, 0, ErrNonNumeric, "abc"},
		{"empty value", "-", true, 1, 0, false, noCAS, 0, ErrNonNumeric, "-"},
		{"negative", "-1", false, 1, 0, false, noCAS, 0, ErrNonNumeric, "-1"},
		{"trailing space", "1 ", true, 1, 0, false, noCAS, 0, ErrNonNumeric, "1 "},
		{"overflowing value", "18446744073709551616", true, 1, 0, false, noCAS, 0, ErrNonNumeric, "18446744073709551616"},
		{"21 digits", "000000000000000000001", true, 1, 0, false, noCAS, 0, ErrNonNumeric, "000000000000000000001"},
		{"20 digits", "00000000000000000001", true, 1, 0, false, noCAS, 2, nil, "2"},
		{"cas match", "10", true, 1, 0, false, rightCAS, 11, nil, "11"},
		{"cas mismatch", "10", true, 1, 0, false, wrongCAS, 0, ErrExists, "10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newTestStore(t, Config{})
			key := []byte("n")
			var oldCAS uint64
			if tt.stored != "" {
				v := tt.stored
				if v == "-" {
					v = ""
				}
				oldCAS, _ = s.Set(ModeSet, key, []byte(v), 3, 0, 0, 0)
			}
			var cas uint64
			switch tt.cas {
			case rightCAS:
				cas = oldCAS
			case wrongCAS:
				cas = oldCAS + 100
			}
			got, newCAS, err := s.Arith(key, tt.incr, tt.delta, tt.initial, 0, tt.create, cas)
			if got != tt.want || !errors.Is(err, tt.wantErr) {
				t.Fatalf("Arith = %d, %v; want %d, %v", got, err, tt.want, tt.wantErr)
			}
			val, m, ok := s.Get(key, nil)
			wantValue := tt.wantValue
			if wantValue == "-" {
				wantValue = ""
			}
			if ok != (tt.wantValue != "") || string(val) != wantValue {
				t.Fatalf("value afterwards = %q found %v, want %q", val, ok, wantValue)
			}
			if err == nil {
				if m.CAS != newCAS || newCAS <= oldCAS {
					t.Errorf("CAS = %d, Arith returned %d, old %d", m.CAS, newCAS, oldCAS)
				}
				if wantFlags := map[bool]uint32{true: 3, false: 0}[tt.stored != ""]; m.Flags != wantFlags {
					t.Errorf("flags = %d, want %d", m.Flags, wantFlags)
				}
			}
		})
	}
}

func TestArithKeepsExpiration(t *testing.T) {
	s, clk := newTestStore(t, Config{})
	key := []byte("n")
	exp := clk.Now() + 10
	if _, _, err := s.Arith(key, true, 1, 41, exp, true, 0); err != nil {
		t.Fatal(err)
	}
	if v, _, err := s.Arith(key, true, 1, 0, 0, false, 0); err != nil || v != 42 {
		t.Fatalf("Arith = %d, %v; want 42", v, err)
	}
	if _, m, ok := s.Get(key, nil); !ok || m.Exp != exp {
		t.Fatalf("Get meta = %+v found %v, want exp %d", m, ok, exp)
	}
	clk.Set(exp)
	if _, _, err := s.Arith(key, true, 1, 0, 0, false, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Arith after expiry = %v, want ErrNotFound", err)
	}
	// Creating with a past expiration returns initial but stores nothing.
	if v, _, err := s.Arith(key, true, 1, 7, clk.Now()-1, true, 0); err != nil || v != 7 {
		t.Fatalf("Arith create past exp = %d, %v", v, err)
	}
	if _, _, ok := s.Get(key, nil); ok {
		t.Fatal("item created with a past expiration is visible")
	}
}

func TestExpiration(t *testing.T) {
	s, clk := newTestStore(t, Config{})
	exp := clk.Now() + 10
	for _, k := range []string{"read", "unread"} {
		if _, err := s.Set(ModeSet, []byte(k), []byte("v"), 0, 0, exp, 0); err != nil {
			t.Fatal(err)
		}
	}
	clk.Set(exp - 1)
	if _, m, ok := s.Get([]byte("read"), nil); !ok || m.Exp != exp {
		t.Fatalf("Get before expiry: meta %+v found %v", m, ok)
	}
	clk.Set(exp)
	for _, k := range []string{"read", "unread"} {
		if _, _, ok := s.Get([]byte(k), nil); ok {
			t.Fatalf("Get(%q) at its expiry time hit", k)
		}
	}
	st := s.Stats()
	if st.CurrItems != 0 || st.Bytes != 0 || st.Reclaimed != 2 || st.ExpiredUnfetched != 1 {
		t.Fatalf("stats after lazy reclaim = %+v", st)
	}
	// An expired key counts as missing for every mode.
	if _, err := s.Set(ModeSet, []byte("k"), []byte("v"), 0, 0, clk.Now()+1, 0); err != nil {
		t.Fatal(err)
	}
	clk.Advance(1)
	if _, err := s.Set(ModeReplace, []byte("k"), []byte("v"), 0, 0, 0, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("replace expired = %v, want ErrNotFound", err)
	}
	if err := s.Delete([]byte("k"), 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete expired = %v, want ErrNotFound", err)
	}
	checkInvariants(t, s)
}

func TestDelete(t *testing.T) {
	tests := []struct {
		name    string
		missing bool
		cas     casArg
		wantErr error
	}{
		{"existing", false, noCAS, nil},
		{"missing", true, noCAS, ErrNotFound},
		{"cas match", false, rightCAS, nil},
		{"cas mismatch", false, wrongCAS, ErrExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newTestStore(t, Config{})
			key := []byte("k")
			var cas uint64
			if !tt.missing {
				cas, _ = s.Set(ModeSet, key, []byte("v"), 0, 0, 0, 0)
			}
			switch tt.cas {
			case noCAS:
				cas = 0
			case wrongCAS:
				cas++
			}
			if err := s.Delete(key, cas); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Delete = %v, want %v", err, tt.wantErr)
			}
			_, _, ok := s.Get(key, nil)
			if wantOK := tt.wantErr != nil && !tt.missing; ok != wantOK {
				t.Fatalf("found after Delete = %v, want %v", ok, wantOK)
			}
			checkInvariants(t, s)
		})
	}
}

func TestTouchAndGetAndTouch(t *testing.T) {
	s, clk := newTestStore(t, Config{})
	key := []byte("k")
	cas, _ := s.Set(ModeSet, key, []byte("v"), 5, 0, 0, 0)
	exp := clk.Now() + 100

	m, ok := s.Touch(key, exp)
	if !ok || m.Exp != exp || m.CAS != cas || m.Flags != 5 {
		t.Fatalf("Touch = %+v %v; want exp %d cas %d flags 5", m, ok, exp, cas)
	}
	clk.Set(exp - 1)
	val, m, ok := s.GetAndTouch(key, exp+100, nil)
	if !ok || string(val) != "v" || m.Exp != exp+100 || m.CAS != cas {
		t.Fatalf("GetAndTouch = %q %+v %v", val, m, ok)
	}
	clk.Set(exp) // the old expiration no longer applies
	if _, _, ok := s.Get(key, nil); !ok {
		t.Fatal("item expired at its old expiration")
	}
	if m, ok := s.Touch(key, 0); !ok || m.Exp != 0 {
		t.Fatalf("Touch(0) = %+v %v", m, ok)
	}
	if _, ok := s.Touch(key, clk.Now()); !ok {
		t.Fatal("Touch to now missed")
	}
	if _, _, ok := s.Get(key, nil); ok {
		t.Fatal("item touched to the past is visible")
	}
	if _, ok := s.Touch([]byte("missing"), 0); ok {
		t.Fatal("Touch of a missing key hit")
	}
	if _, _, ok := s.GetAndTouch([]byte("missing"), 0, nil); ok {
		t.Fatal("GetAndTouch of a missing key hit")
	}
}

func TestFlush(t *testing.T) {
	fill := func(t *testing.T, s *Store, keys ...string) {
		t.Helper()
		for _, k := range keys {
			if _, err := s.Set(ModeSet, []byte(k), []byte("v"), 0, 0, 0, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	present := func(s *Store, k string) bool { _, _, ok := s.Get([]byte(k), nil); return ok }

	t.Run("now", func(t *testing.T) {
		s, clk := newTestStore(t, Config{})
		fill(t, s, "a", "b", "c")
		s.Flush(clk.Now())
		if st := s.Stats(); st.CurrItems != 0 || st.Bytes != 0 || st.Reclaimed != 3 {
			t.Fatalf("stats after Flush = %+v", st)
		}
		fill(t, s, "d") // stored in the same second, after the flush
		if !present(s, "d") {
			t.Fatal("item stored after Flush is missing")
		}
		s.Flush(0)
		if present(s, "d") {
			t.Fatal("Flush(0) kept an item")
		}
		checkInvariants(t, s)
	})
	t.Run("delayed", func(t *testing.T) {
		s, clk := newTestStore(t, Config{})
		fill(t, s, "before")
		at := clk.Now() + 10
		s.Flush(at)
		clk.Advance(5)
		fill(t, s, "during")
		if !present(s, "before") || !present(s, "during") {
			t.Fatal("items gone before the flush time")
		}
		clk.Set(at)
		if present(s, "before") || present(s, "during") {
			t.Fatal("items survived the delayed flush")
		}
		fill(t, s, "after")
		clk.Advance(100)
		if !present(s, "after") {
			t.Fatal("item stored after the flush took effect is missing")
		}
		if st := s.Stats(); st.CurrItems != 1 || st.Reclaimed != 2 {
			t.Fatalf("stats = %+v", st)
		}
	})
	t.Run("later flush replaces pending", func(t *testing.T) {
		s, clk := newTestStore(t, Config{})
		fill(t, s, "a")
		s.Flush(clk.Now() + 10)
		s.Flush(clk.Now() + 20)
		clk.Advance(10)
		if !present(s, "a") {
			t.Fatal("replaced flush still ran")
		}
		clk.Advance(10)
		if present(s, "a") {
			t.Fatal("replacing flush did not run")
		}
	})
	t.Run("flush now cancels pending", func(t *testing.T) {
		s, clk := newTestStore(t, Config{})
		s.Flush(clk.Now() + 10)
		s.Flush(clk.Now())
		fill(t, s, "a")
		clk.Advance(10)
		if !present(s, "a") {
			t.Fatal("cancelled flush ran")
		}
	})
}

func TestEviction(t *testing.T) {
	const (
		valueLen = 100
		limit    = 20 * (4 + valueLen + ItemOverhead) // keys are 4 bytes
	)
	charge := uint64(ItemSize(4, valueLen))
	s, _ := newTestStore(t, Config{MemoryLimit: limit, Shards: 4})
	value := make([]byte, valueLen)
	for i := range 200 {
		if _, err := s.Set(ModeSet, fmt.Appendf(nil, "k%03d", i), value, 0, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
		if st := s.Stats(); st.Bytes > limit {
			t.Fatalf("after %d sets Bytes = %d > limit %d", i+1, st.Bytes, limit)
		}
	}
	st := s.Stats()
	if st.CurrItems+st.Evictions != 200 || st.Evictions == 0 || st.EvictedUnfetched != st.Evictions {
		t.Fatalf("stats = %+v; want CurrItems+Evictions = 200, all evictions unfetched", st)
	}
	if st.Bytes != st.CurrItems*charge {
		t.Fatalf("Bytes = %d, want %d items * %d", st.Bytes, st.CurrItems, charge)
	}
	// The most recent item is always kept.
	if _, _, ok := s.Get([]byte("k199"), nil); !ok {
		t.Fatal("newest item was evicted")
	}
	checkInvariants(t, s)
}

func TestSecondChance(t *testing.T) {
	limit := 10 * ItemSize(4, 10)
	for _, read := range []bool{true, false} {
		t.Run(fmt.Sprintf("read=%v", read), func(t *testing.T) {
			s, _ := newTestStore(t, Config{MemoryLimit: limit, Shards: 1})
			value := make([]byte, 10)
			hot := []byte("hot!")
			if _, err := s.Set(ModeSet, hot, value, 0, 0, 0, 0); err != nil {
				t.Fatal(err)
			}
			for i := range 100 {
				if read {
					if _, _, ok := s.Get(hot, nil); !ok {
						t.Fatalf("hot key evicted after %d sets", i)
					}
				}
				if _, err := s.Set(ModeSet, fmt.Appendf(nil, "c%03d", i), value, 0, 0, 0, 0); err != nil {
					t.Fatal(err)
				}
			}
			_, _, ok := s.Get(hot, nil)
			if ok != read {
				t.Fatalf("hot key present = %v, want %v", ok, read)
			}
			if st := s.Stats(); st.Evictions < 90 {
				t.Fatalf("Evictions = %d, want >= 90", st.Evictions)
			}
		})
	}
}

func TestEvictionPrefersExpired(t *testing.T) {
	limit := 10 * ItemSize(4, 10)
	s, clk := newTestStore(t, Config{MemoryLimit: limit, Shards: 1})
	value := make([]byte, 10)
	for i := range 10 {
		if _, err := s.Set(ModeSet, fmt.Appendf(nil, "e%03d", i), value, 0, 0, clk.Now()+1, 0); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(1)
	for i := range 10 {
		if _, err := s.Set(ModeSet, fmt.Appendf(nil, "l%03d", i), value, 0, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Evictions != 0 || st.Reclaimed != 10 || st.ExpiredUnfetched != 10 || st.CurrItems != 10 {
		t.Fatalf("stats = %+v; want 10 reclaimed, no evictions", st)
	}
}

func TestSweeper(t *testing.T) {
	clk := newClock(t0)
	s, err := New(Config{Shards: 4, SweepInterval: 20 * time.Millisecond, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 50 {
		if _, err := s.Set(ModeSet, fmt.Appendf(nil, "k%d", i), []byte("v"), 0, 0, clk.Now()+10, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Set(ModeSet, []byte("forever"), []byte("v"), 0, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	clk.Advance(10)
	waitFor(t, "sweeper reclaims expired items", func() bool { return s.Stats().CurrItems == 1 })
	if st := s.Stats(); st.Reclaimed != 50 || st.ExpiredUnfetched != 50 {
		t.Fatalf("stats = %+v", st)
	}

	s.Flush(clk.Now() + 5)
	clk.Advance(5)
	waitFor(t, "sweeper applies a delayed flush", func() bool { return s.Stats().CurrItems == 0 })
	checkInvariants(t, s)
}

// waitFor polls cond until it holds, failing the test after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCloseTwice(t *testing.T) {
	for _, interval := range []time.Duration{0, -1, time.Millisecond} {
		t.Run(fmt.Sprintf("sweep=%v", interval), func(t *testing.T) {
			s, err := New(Config{SweepInterval: interval})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Set(ModeSet, []byte("k"), []byte("v"), 0, 0, 0, 0); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s.Close()
			if _, err := s.Set(ModeSet, []byte("k"), []byte("v"), 0, 0, 0, 0); !errors.Is(err, ErrClosed) {
				t.Fatalf("Set after Close = %v, want ErrClosed", err)
			}
			if _, _, ok := s.Get([]byte("k"), nil); ok {
				t.Fatal("Get after Close hit")
			}
			s.Flush(0)
			if st := s.Stats(); st.CurrItems != 0 {
				t.Fatalf("stats after Close = %+v", st)
			}
		})
	}
}

func TestAllocs(t *testing.T) {
	s, err := New(Config{SweepInterval: -1}) // the real clock
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	value := make([]byte, 100)
	keys := [][]byte{[]byte("forever"), []byte("expiring")}
	s.Set(ModeSet, keys[0], value, 0, 0, 0, 0)
	s.Set(ModeSet, keys[1], value, 0, 0, time.Now().Unix()+3600, 0)
	dst := make([]byte, 0, 256)
	for _, key := range keys {
		t.Run("get/"+string(key), func(t *testing.T) {
			if n := testing.AllocsPerRun(1000, func() {
				if _, _, ok := s.Get(key, dst[:0]); !ok {
					t.Fatal("miss")
				}
			}); n != 0 {
				t.Fatalf("Get hit: %v allocs, want 0", n)
			}
		})
	}
	t.Run("get/miss", func(t *testing.T) {
		if n := testing.AllocsPerRun(1000, func() { s.Get([]byte("nope"), dst[:0]) }); n != 0 {
			t.Fatalf("Get miss: %v allocs, want 0", n)
		}
	})
	t.Run("set/overwrite same size", func(t *testing.T) {
		if n := testing.AllocsPerRun(1000, func() { s.Set(ModeSet, keys[0], value, 0, 0, 0, 0) }); n != 0 {
			t.Fatalf("Set overwrite: %v allocs, want 0", n)
		}
	})
	// A replica's copies: a newer one replaces the item, an older one is
	// ignored, a deletion of a key it does not hold does nothing.
	t.Run("setWithMeta/newer", func(t *testing.T) {
		if n := testing.AllocsPerRun(1000, func() {
			if ok, _ := s.SetWithMeta(keys[0], value, Meta{CAS: s.NextCAS() + 1}); !ok {
				t.Fatal("a newer copy was not applied")
			}
		}); n != 0 {
			t.Fatalf("SetWithMeta: %v allocs, want 0", n)
		}
	})
	t.Run("setWithMeta/older", func(t *testing.T) {
		if n := testing.AllocsPerRun(1000, func() {
			if ok, _ := s.SetWithMeta(keys[0], value, Meta{CAS: 1}); ok {
				t.Fatal("an older copy was applied")
			}
		}); n != 0 {
			t.Fatalf("SetWithMeta: %v allocs, want 0", n)
		}
	})
	t.Run("deleteWithMeta/miss", func(t *testing.T) {
		if n := testing.AllocsPerRun(1000, func() { s.DeleteWithMeta([]byte("nope"), s.NextCAS()) }); n != 0 {
			t.Fatalf("DeleteWithMeta: %v allocs, want 0", n)
		}
	})
}

// TestHeapPerItem checks that items cost the Go heap only their index
// entry: ItemSize documents 19 to 39 bytes per item.
func TestHeapPerItem(t *testing.T) {
	if testing.Short() {
		t.Skip("stores half a million items")
	}
	for _, n := range []int{30_000, 100_000, 500_000} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		s, _ := newTestStore(t, Config{MemoryLimit: 1 << 30})
		value := make([]byte, 16)
		key := make([]byte, 0, 16)
		for i := range n {
			key = fmt.Appendf(key[:0], "%016d", i)
			if _, err := s.Set(ModeSet, key, value, 0, 0, 0, 0); err != nil {
				t.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perItem := float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
		t.Logf("items=%d: %.1f bytes of Go heap per item", n, perItem)
		if perItem > 40 {
			t.Errorf("items=%d: an item costs %.1f bytes of Go heap, want at most 40", n, perItem)
		}
		if st := s.Stats(); st.CurrItems != uint64(n) || st.Bytes != uint64(n)*uint64(ItemSize(16, 16)) {
			t.Errorf("stats = %+v, want %d items of %d bytes", st, n, ItemSize(16, 16))
		}
		s.Close()
	}
}

func TestConcurrent(t *testing.T) {
	const (
		workers = 8
		ops     = 3000
		keys    = 64
	)
	clk := newClock(t0)
	s, err := New(Config{
		MemoryLimit:   40 * (ItemOverhead + 64),
		Shards:        4,
		SweepInterval: time.Millisecond,
		Now:           clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			dst := make([]byte, 0, 64)
			for i := range ops {
				r := uint64(w*ops+i) * 0x9e3779b97f4a7c15
				key := []byte("key" + strconv.Itoa(int(r>>8%keys)))
				val := []byte(strconv.Itoa(int(r >> 40 % 1000)))
				var exp int64
				if r&0x10 != 0 {
					exp = clk.Now() + int64(r>>20%3)
				}
				switch r >> 4 % 12 {
				case 0, 1, 2, 3:
					s.Get(key, dst[:0])
				case 4:
					s.Set(ModeSet, key, val, 0, 0, exp, 0)
				case 5:
					s.Set(ModeAdd, key, val, 0, 0, exp, 0)
				case 6:
					s.Set(ModeAppend, key, val, 0, 0, 0, 0)
				case 7:
					if _, m, ok := s.Get(key, nil); ok {
						s.Set(ModeReplace, key, val, 0, 0, exp, m.CAS)
					}
				case 8:
					s.Arith(key, r&1 == 0, r>>32%10, 0, exp, true, 0)
				case 9:
					s.Delete(key, 0)
				case 10:
					s.GetAndTouch(key, exp, dst[:0])
				case 11:
					switch r >> 50 % 50 {
					case 0:
						s.Flush(0)
					case 1:
						s.Flush(clk.Now() + 1)
					case 2, 3, 4:
						clk.Advance(1)
					default:
						s.Touch(key, exp)
					}
				}
			}
		})
	}
	wg.Wait()
	checkInvariants(t, s)
	if st := s.Stats(); st.Bytes > st.LimitMaxBytes {
		t.Fatalf("Bytes %d over limit %d when idle", st.Bytes, st.LimitMaxBytes)
	}
}
