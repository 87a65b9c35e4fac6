package store

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
)

// modelItem is the fuzz model's view of an item.
type modelItem struct {
	value    []byte
	flags    uint32
	dataType uint8
	exp      int64
	cas      uint64
}

// FuzzStore runs a sequence of operations decoded from the input against a
// Store and against a plain map, and checks that they agree. The clock is
// fixed and the memory limit large, so nothing expires by itself and
// nothing is evicted.
//
// Each operation takes 4 bytes: op, key, arg1, arg2.
func FuzzStore(f *testing.F) {
	f.Add([]byte{0, 0, 3, 0, 3, 0, 5, 0, 9, 0, 0, 0})       // set, append, get
	f.Add([]byte{8, 1, 0, 1, 8, 1, 1, 0, 9, 1, 0, 0})       // incr create, decr, get
	f.Add([]byte{0, 2, 0, 0x40, 2, 2, 1, 0x40, 6, 2, 0, 0}) // set, replace with cas, delete
	f.Add([]byte{1, 3, 1, 0, 1, 3, 2, 0, 10, 3, 0, 3, 11, 0, 0, 0})
	f.Add([]byte{0, 0, 8, 0, 0, 0, 6, 0, 4, 0, 2, 0, 9, 0, 0, 0}) // set, shrink, prepend in place, get
	f.Fuzz(func(t *testing.T, input []byte) {
		const (
			now     = t0
			maxOps  = 256
			numKeys = 6
			numOps  = 14 // ops 0-11: a client's commands; 12, 13: copies from other nodes
		)
		s, _ := newTestStore(t, Config{MemoryLimit: 1 << 24, Shards: 2})
		model := map[string]*modelItem{}
		var lastCAS uint64
		// gotCAS checks that a successful mutation's CAS is new and larger.
		gotCAS := func(op string, cas uint64) {
			if cas <= lastCAS {
				t.Fatalf("%s: CAS %d not above previous %d", op, cas, lastCAS)
			}
			lastCAS = cas
		}
		for n := 0; len(input) >= 4 && n < maxOps; n++ {
			op, k, a1, a2 := input[0], input[1], input[2], input[3]
			input = input[4:]
			key := []byte{'k', '0' + k%numKeys}
			cur := model[string(key)]
			// a2 bits 6-7 choose the CAS argument: none, right, wrong.
			var cas uint64
			switch a2 >> 6 {
			case 1:
				if cur != nil {
					cas = cur.cas
				} else {
					cas = lastCAS + 1
				}
			case 2:
				cas = lastCAS + 1
			}
			// a2 bits 4-5 choose the expiration: never, past, now, future.
			exp := [4]int64{0, now - 1, now, now + 100}[a2>>4&3]
			// a1 chooses the value: a number (odd) or a short run of letters.
			value := []byte(strconv.Itoa(int(a1 >> 1)))
			if a1&1 == 0 {
				value = bytes.Repeat([]byte{'a' + a1%26}, int(a1>>1)%5)
			}
			flags := uint32(a2 & 0xf)
			desc := fmt.Sprintf("op %d key %s value %q flags %d exp %d cas %d", op%numOps, key, value, flags, exp, cas)
			// copyCAS is the CAS of a copy from another node (ops 12, 13):
			// just below, at or just above the held item's, or new.
			copyCAS := lastCAS + 1
			if cur != nil && a1&3 != 3 {
				copyCAS = max(1, cur.cas+uint64(a1&3)-1)
			}

			switch op % numOps {
			case 0, 1, 2, 3, 4: // set, add, replace, append, prepend
				mode := Mode(op % numOps)
				var want error
				switch {
				case mode == ModeAdd && cur != nil:
					want = ErrExists
				case cur == nil && (mode == ModeReplace || mode == ModeSet && cas != 0):
					want = ErrNotFound
				case cur == nil && mode >= ModeAppend:
					want = ErrNotStored
				case mode != ModeAdd && cas != 0 && cur.cas != cas:
					want = ErrExists
				}
				newCAS, err := s.Set(mode, key, value, flags, 1, exp, cas)
				if !errors.Is(err, want) {
					t.Fatalf("%s: Set error %v, want %v", desc, err, want)
				}
				if err != nil {
					break
				}
				gotCAS(desc, newCAS)
				switch {
				case mode == ModeAppend:
					cur.value = append(bytes.Clone(cur.value), value...)
					cur.cas = newCAS
				case mode == ModePrepend:
					cur.value = append(bytes.Clone(value), cur.value...)
					cur.cas = newCAS
				case exp != 0 && exp <= now:
					delete(model, string(key))
				default:
					model[string(key)] = &modelItem{bytes.Clone(value), flags, 1, exp, newCAS}
				}
			case 5: // delete
				var want error
				switch {
				case cur == nil:
					want = ErrNotFound
				case cas != 0 && cas != cur.cas:
					want = ErrExists
				}
				if err := s.Delete(key, cas); !errors.Is(err, want) {
					t.Fatalf("%s: Delete error %v, want %v", desc, err, want)
				}
				if want == nil {
					delete(model, string(key))
				}
			case 6, 7: // incr, decr
				incr := op%numOps == 6
				delta := [8]uint64{0, 1, 2, 7, 100, 1 << 63, 1<<64 - 1, 1<<64 - 2}[a1&7]
				initial := [4]uint64{0, 5, 1<<64 - 1, 42}[a1>>3&3]
				create := a1&0x20 != 0
				var want error
				var wantValue uint64
				switch {
				case cur == nil && (!create || cas != 0):
					want = ErrNotFound
				case cur == nil:
					wantValue = initial
				case cas != 0 && cas != cur.cas:
					want = ErrExists
				default:
					old, err := strconv.ParseUint(string(cur.value), 10, 64)
					switch {
					case err != nil || len(cur.value) > 20:
						want = ErrNonNumeric
					case incr:
						wantValue = old + delta
					case old > delta:
						wantValue = old - delta
					}
				}
				v, newCAS, err := s.Arith(key, incr, delta, initial, exp, create, cas)
				if !errors.Is(err, want) || v != wantValue {
					t.Fatalf("%s delta %d initial %d create %v: Arith = %d, %v; want %d, %v", desc, delta, initial, create, v, err, wantValue, want)
				}
				if err != nil {
					break
				}
				gotCAS(desc, newCAS)
				switch {
				case cur != nil:
					cur.value = strconv.AppendUint(nil, v, 10)
					cur.cas = newCAS
				case exp == 0 || exp > now:
					model[string(key)] = &modelItem{strconv.AppendUint(nil, v, 10), 0, 0, exp, newCAS}
				}
			case 8: // touch
				m, ok := s.Touch(key, exp)
				if ok != (cur != nil) {
					t.Fatalf("%s: Touch found %v, model has %v", desc, ok, cur != nil)
				}
				if ok {
					cur.exp = exp
					checkMeta(t, desc, m, cur)
					if exp != 0 && exp <= now {
						delete(model, string(key))
					}
				}
			case 9, 10: // get, get and touch
				var got []byte
				var m Meta
				var ok bool
				if op%numOps == 9 {
					got, m, ok = s.Get(key, []byte("prefix"))
				} else {
					got, m, ok = s.GetAndTouch(key, exp, []byte("prefix"))
				}
				if ok != (cur != nil) {
					t.Fatalf("%s: found %v, model has %v", desc, ok, cur != nil)
				}
				if !ok {
					break
				}
				if op%numOps == 10 {
					cur.exp = exp
				}
				if want := append([]byte("prefix"), cur.value...); !bytes.Equal(got, want) {
					t.Fatalf("%s: got %q, want %q", desc, got, want)
				}
				checkMeta(t, desc, m, cur)
				if exp := cur.exp; exp != 0 && exp <= now {
					delete(model, string(key))
				}
			case 11: // flush
				s.Flush(now)
				clear(model)
			case 12: // a copy from another node: newest CAS wins
				stale := cur != nil && (cur.cas > copyCAS || cur.cas == copyCAS && cur.exp == exp)
				ok, err := s.SetWithMeta(key, value, Meta{Flags: flags, DataType: 2, Exp: exp, CAS: copyCAS})
				if err != nil || ok == stale {
					t.Fatalf("%s copyCAS %d: SetWithMeta = %v, %v; held %+v", desc, copyCAS, ok, err, cur)
				}
				lastCAS = max(lastCAS, copyCAS)
				switch {
				case stale:
				case exp != 0 && exp <= now:
					delete(model, string(key))
				default:
					model[string(key)] = &modelItem{bytes.Clone(value), flags, 2, exp, copyCAS}
				}
			case 13: // a deletion from another node
				want := cur != nil && cur.cas < copyCAS
				if got := s.DeleteWithMeta(key, copyCAS); got != want {
					t.Fatalf("%s copyCAS %d: DeleteWithMeta = %v, want %v; held %+v", desc, copyCAS, got, want, cur)
				}
				lastCAS = max(lastCAS, copyCAS)
				if want {
					delete(model, string(key))
				}
			}
		}
		checkInvariants(t, s)
		// Reading every key also reclaims items touched into the past.
		for k := range byte(numKeys) {
			key := []byte{'k', '0' + k}
			it := model[string(key)]
			got, m, ok := s.Get(key, nil)
			if ok != (it != nil) {
				t.Fatalf("final: %s found %v, model has %v", key, ok, it != nil)
			}
			if ok {
				if !bytes.Equal(got, it.value) {
					t.Fatalf("final: %s = %q, want %q", key, got, it.value)
				}
				checkMeta(t, "final "+string(key), m, it)
			}
		}
		if st := s.Stats(); st.CurrItems != uint64(len(model)) || st.Evictions != 0 {
			t.Fatalf("final stats %+v, model holds %d items", st, len(model))
		}
	})
}

func checkMeta(t *testing.T, desc string, m Meta, it *modelItem) {
	t.Helper()
	want := Meta{Flags: it.flags, DataType: it.dataType, Exp: it.exp, CAS: it.cas}
	if m != want {
		t.Fatalf("%s: meta %+v, want %+v", desc, m, want)
	}
}

// FuzzEviction runs operations on a store too small for them, so that its
// ring wraps, pads its end, evicts and gives second chances all the time,
// and checks after every operation that the ring is well formed and that
// the store never returns anything but the last value written under a key.
// An item may vanish (evicted), but once gone it stays gone until written
// again.
//
// The first byte sets the memory limit; then each operation takes 3 bytes:
// op, key, size.
func FuzzEviction(f *testing.F) {
	f.Add([]byte{0, 0, 0, 200, 0, 1, 200, 1, 0, 0, 0, 2, 250, 0, 3, 9, 1, 0, 0})
	f.Add([]byte{7, 0, 0, 10, 2, 0, 100, 2, 0, 100, 1, 0, 0, 3, 0, 0, 0, 1, 255})
	f.Fuzz(checkEviction)
}

// TestEvictionRandom runs FuzzEviction's check on long random inputs.
func TestEvictionRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		input := make([]byte, 1+3*300)
		for i := range input {
			input[i] = byte(r.Uint32())
		}
		checkEviction(t, input)
	}
}

func checkEviction(t *testing.T, input []byte) {
	if len(input) == 0 {
		return
	}
	// The first byte sets the ring's size, which moves where records
	// meet its end.
	limit := 1700 + 8*int64(input[0])
	input = input[1:]
	{
		const numKeys = 16
		s, _ := newTestStore(t, Config{MemoryLimit: limit, MaxItemSize: 400, Shards: 1})
		model := map[string][]byte{} // the last value written; absent: gone
		for n := 0; len(input) >= 3 && n < 300; n++ {
			op, k, size := input[0], input[1], int(input[2])
			input = input[3:]
			key := fmt.Appendf(nil, "key%d", k%numKeys)
			value := bytes.Repeat([]byte{'a' + byte(n%26)}, size)
			want, known := model[string(key)]
			switch op % 5 {
			case 0: // set
				if _, err := s.Set(ModeSet, key, value, 0, 0, 0, 0); err != nil {
					t.Fatalf("set %s (%d bytes): %v", key, size, err)
				}
				model[string(key)] = value
			case 1: // get
				got, _, ok := s.Get(key, nil)
				switch {
				case ok && !known:
					t.Fatalf("get %s = %d bytes, want a miss", key, len(got))
				case ok && !bytes.Equal(got, want):
					t.Fatalf("get %s = %q, want %q", key, got, want)
				case !ok:
					delete(model, string(key))
				}
			case 2: // append
				_, err := s.Set(ModeAppend, key, value[:size/4], 0, 0, 0, 0)
				switch {
				case err == nil && !known:
					t.Fatalf("append to %s, which is gone, succeeded", key)
				case err == nil:
					model[string(key)] = append(bytes.Clone(want), value[:size/4]...)
				case errors.Is(err, ErrNotStored), errors.Is(err, ErrTooLarge):
					if errors.Is(err, ErrNotStored) {
						delete(model, string(key))
					}
				default:
					t.Fatalf("append to %s: %v", key, err)
				}
			case 3: // delete
				if err := s.Delete(key, 0); err == nil && !known {
					t.Fatalf("delete %s, which is gone, succeeded", key)
				}
				delete(model, string(key))
			case 4: // touch: marks the item read, like a get
				if _, ok := s.Touch(key, 0); ok && !known {
					t.Fatalf("touch %s, which is gone, succeeded", key)
				} else if !ok {
					delete(model, string(key))
				}
			}
			checkInvariants(t, s)
			if st := s.Stats(); st.Bytes > uint64(limit) {
				t.Fatalf("Bytes %d over the limit %d", st.Bytes, limit)
			}
		}
	}
}
