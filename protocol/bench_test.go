package protocol

import "testing"

// BenchmarkParse parses one pipelined batch of 16 GETs and 16 SETs of
// 100-byte values per iteration; ns/op is per batch.
func BenchmarkParse(b *testing.B) {
	var batch []byte
	value := make([]byte, 100)
	for i := range 16 {
		key := []byte{'k', 'e', 'y', byte('a' + i)}
		batch = AppendFrame(batch, &Frame{Magic: MagicRequest, Opcode: OpGet, Key: key})
		batch = AppendFrame(batch, &Frame{Magic: MagicRequest, Opcode: OpSet, Extras: make([]byte, 8), Key: key, Value: value})
	}
	b.SetBytes(int64(len(batch)))
	b.ReportAllocs()
	for b.Loop() {
		for buf := batch; len(buf) > 0; {
			_, n, err := Parse(buf, MagicRequest, 1<<20)
			if err != nil {
				b.Fatal(err)
			}
			buf = buf[n:]
		}
	}
}

// BenchmarkAppendFrame encodes a GET response with a 100-byte value into a
// reused buffer.
func BenchmarkAppendFrame(b *testing.B) {
	f := &Frame{Magic: MagicResponse, Opcode: OpGet, Extras: make([]byte, 4), Value: make([]byte, 100)}
	dst := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		dst = AppendFrame(dst[:0], f)
	}
}
