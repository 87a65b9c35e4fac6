package protocol

import (
	"bytes"
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	set := AppendFrame(nil, &Frame{Magic: MagicRequest, Opcode: OpSet, VBucket: 7, Opaque: 0xdeadbeef, CAS: 42,
		Extras: []byte{0, 0, 0, 1, 0, 0, 0, 2}, Key: []byte("foo"), Value: []byte("bar")})
	tests := []struct {
		name    string
		buf     []byte
		maxBody uint32
		wantErr error
		wantN   int
	}{
		{"whole frame", set, 1 << 20, nil, len(set)},
		{"frame and more", append(append([]byte{}, set...), 0x80, 0x0a), 1 << 20, nil, len(set)},
		{"empty", nil, 1 << 20, ErrIncomplete, 0},
		{"partial header", set[:10], 1 << 20, ErrIncomplete, 0},
		{"partial body", set[:len(set)-1], 1 << 20, ErrIncomplete, 0},
		{"bad magic", append([]byte{0x81}, set[1:]...), 1 << 20, ErrBadMagic, 0},
		{"ascii", []byte("get foo\r\n"), 1 << 20, ErrBadMagic, 0},
		{"body too large", set[:HeaderLen], 5, ErrTooLarge, 0},
		{"lengths exceed body", AppendHeader(nil, MagicRequest, OpGet, 10, 0, 0, 0, 4, 1, 0), 1 << 20, ErrIncomplete, 0},
		{"lengths exceed complete body", append(AppendHeader(nil, MagicRequest, OpGet, 10, 0, 0, 0, 4, 1, 0), 1, 2, 3, 4), 1 << 20, ErrBadLengths, HeaderLen + 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, n, err := Parse(tt.buf, MagicRequest, tt.maxBody)
			if !errors.Is(err, tt.wantErr) || n != tt.wantN {
				t.Fatalf("Parse = n %d err %v; want n %d err %v", n, err, tt.wantN, tt.wantErr)
			}
			if err == nil {
				if req.Opcode != OpSet || req.VBucket != 7 || req.Opaque != 0xdeadbeef || req.CAS != 42 {
					t.Errorf("header = %+v", req.Header)
				}
				if !bytes.Equal(req.Extras, []byte{0, 0, 0, 1, 0, 0, 0, 2}) || string(req.Key) != "foo" || string(req.Value) != "bar" {
					t.Errorf("body = %q %q %q", req.Extras, req.Key, req.Value)
				}
			}
		})
	}
}

func TestParseSlicesCannotGrowIntoNextFrame(t *testing.T) {
	f := AppendFrame(nil, &Frame{Magic: MagicRequest, Opcode: OpGet, Key: []byte("k")})
	two := append(append([]byte{}, f...), f...)
	req, _, err := Parse(two, MagicRequest, 100)
	if err != nil {
		t.Fatal(err)
	}
	if cap(req.Key) != 1 || cap(req.Value) != 0 {
		t.Fatalf("caps key %d value %d: an append could overwrite the next frame", cap(req.Key), cap(req.Value))
	}
}

func TestQuiet(t *testing.T) {
	tests := []struct {
		op    Opcode
		quiet bool
		loud  Opcode
	}{
		{OpGet, false, OpGet}, {OpGetQ, true, OpGet}, {OpGetKQ, true, OpGetK}, {OpSetQ, true, OpSet},
		{OpNoop, false, OpNoop}, {OpGATKQ, true, OpGATK}, {OpFlushQ, true, OpFlush}, {OpQuitQ, true, OpQuit},
		{OpStat, false, OpStat},
	}
	for _, tt := range tests {
		t.Run(tt.op.String(), func(t *testing.T) {
			if tt.op.IsQuiet() != tt.quiet || tt.op.Loud() != tt.loud {
				t.Fatalf("IsQuiet %v Loud %v; want %v %v", tt.op.IsQuiet(), tt.op.Loud(), tt.quiet, tt.loud)
			}
		})
	}
	if Opcode(0x77).String() != "UNKNOWN" {
		t.Error("unknown opcode has a name")
	}
}

func TestAppendErrorRoundTrip(t *testing.T) {
	b := AppendError(nil, OpGet, StatusKeyNotFound, 99)
	res, n, err := Parse(b, MagicResponse, 1<<20)
	if err != nil || n != len(b) {
		t.Fatal(n, err)
	}
	if res.Status() != StatusKeyNotFound || res.Opaque != 99 || string(res.Value) != "Not found" {
		t.Fatalf("got %+v %q", res.Header, res.Value)
	}
}

func TestParseAllocs(t *testing.T) {
	f := AppendFrame(nil, &Frame{Magic: MagicRequest, Opcode: OpSet, Extras: make([]byte, 8), Key: []byte("key"), Value: []byte("v")})
	out := make([]byte, 0, 256)
	if n := testing.AllocsPerRun(100, func() {
		req, _, _ := Parse(f, MagicRequest, 1<<20)
		out = AppendHeader(out[:0], MagicResponse, req.Opcode, 0, 0, 0, 0, 0, req.Opaque, 1)
	}); n != 0 {
		t.Fatalf("Parse+AppendHeader allocate %v times", n)
	}
}

// FuzzParse feeds arbitrary bytes to the decoder: it must never panic, never
// claim more bytes than it was given, and every frame it returns must
// re-encode to the bytes it was parsed from.
func FuzzParse(f *testing.F) {
	f.Add(AppendFrame(nil, &Frame{Magic: MagicRequest, Opcode: OpSet, Extras: make([]byte, 8), Key: []byte("k"), Value: []byte("v")}), uint32(1<<20))
	f.Add(AppendHeader(nil, MagicRequest, OpGet, 0xffff, 0xff, 0, 0, 0xffffffff, 0, 0), uint32(1<<20))
	f.Add([]byte("get foo\r\n"), uint32(100))
	f.Fuzz(func(t *testing.T, buf []byte, maxBody uint32) {
		for len(buf) > 0 {
			req, n, err := Parse(buf, MagicRequest, maxBody)
			if n < 0 || n > len(buf) {
				t.Fatalf("n = %d of %d", n, len(buf))
			}
			if err != nil {
				if n == 0 {
					return
				}
				buf = buf[n:]
				continue
			}
			if req.BodyLen > maxBody {
				t.Fatalf("body %d accepted over max %d", req.BodyLen, maxBody)
			}
			re := AppendFrame(nil, &Frame{Magic: req.Magic, Opcode: req.Opcode, DataType: req.DataType, VBucket: req.VBucket,
				Opaque: req.Opaque, CAS: req.CAS, Extras: req.Extras, Key: req.Key, Value: req.Value})
			if !bytes.Equal(re, buf[:n]) {
				t.Fatalf("re-encoded frame differs:\n%x\n%x", re, buf[:n])
			}
			buf = buf[n:]
		}
	})
}
