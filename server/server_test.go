package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"vbcache/protocol"
	"vbcache/store"
)

// testServer starts a server on a loopback port with a fresh store and
// returns it and its address; it is shut down when the test ends.
func testServer(t testing.TB, mod func(*Config)) (*Server, string) {
	t.Helper()
	st, err := store.New(store.Config{MemoryLimit: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Store: st, Logger: slog.New(slog.DiscardHandler)}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		st.Close()
	})
	return srv, l.Addr().String()
}

// client is a raw binary protocol client for tests.
type client struct {
	t  testing.TB
	nc net.Conn
	r  *bufio.Reader
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	return &client{t: t, nc: nc, r: bufio.NewReader(nc)}
}

// frame builds a request.
func frame(op protocol.Opcode, key, value string, extras []byte, opaque uint32, cas uint64) []byte {
	return protocol.AppendFrame(nil, &protocol.Frame{Magic: protocol.MagicRequest, Opcode: op, Opaque: opaque,
		CAS: cas, Extras: extras, Key: []byte(key), Value: []byte(value)})
}

func setExtras(flags, exp uint32) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, flags)
	binary.BigEndian.PutUint32(b[4:], exp)
	return b
}

func arithExtras(delta, initial uint64, exp uint32) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint64(b, delta)
	binary.BigEndian.PutUint64(b[8:], initial)
	binary.BigEndian.PutUint32(b[16:], exp)
	return b
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func (c *client) send(frames ...[]byte) {
	c.t.Helper()
	if _, err := c.nc.Write(bytes.Join(frames, nil)); err != nil {
		c.t.Fatal(err)
	}
}

// read reads one response.
func (c *client) read() protocol.Request {
	c.t.Helper()
	hdr := make([]byte, protocol.HeaderLen)
	if _, err := io.ReadFull(c.r, hdr); err != nil {
		c.t.Fatalf("reading response header: %v", err)
	}
	h := protocol.ParseHeader(hdr)
	buf := append(hdr, make([]byte, h.BodyLen)...)
	if _, err := io.ReadFull(c.r, buf[protocol.HeaderLen:]); err != nil {
		c.t.Fatalf("reading response body: %v", err)
	}
	res, _, err := protocol.Parse(buf, protocol.MagicResponse, 1<<30)
	if err != nil {
		c.t.Fatalf("parsing response: %v", err)
	}
	return res
}

func (c *client) do(f []byte) protocol.Request {
	c.t.Helper()
	c.send(f)
	return c.read()
}

// expectClosed asserts the server closes the connection with nothing more
// to say.
func (c *client) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := c.r.ReadByte(); err == nil {
		c.t.Fatalf("connection still open: read %#x", b)
	} else if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
		c.t.Fatalf("want EOF, got %v", err)
	}
}

type step struct {
	req     []byte
	status  protocol.Status
	value   string // checked when status is OK and check is set
	check   bool
	quiet   bool // expect no response at all
	extras  []byte
	wantKey string
}

func TestCommands(t *testing.T) {
	far := uint32(time.Now().Unix() + 3600)
	past := uint32(time.Now().Unix() - 3600)
	tests := []struct {
		name  string
		steps []step
	}{
		{"get miss", []step{{req: frame(protocol.OpGet, "nokey", "", nil, 1, 0), status: protocol.StatusKeyNotFound, value: "Not found", check: true}}},
		{"set get", []step{
			{req: frame(protocol.OpSet, "k", "v1", setExtras(0xdeadbeef, 0), 1, 0)},
			{req: frame(protocol.OpGet, "k", "", nil, 2, 0), value: "v1", check: true, extras: u32(0xdeadbeef)},
		}},
		{"getk returns key", []step{
			{req: frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 0)},
			{req: frame(protocol.OpGetK, "k", "", nil, 2, 0), value: "v", check: true, wantKey: "k"},
			{req: frame(protocol.OpGetK, "missing", "", nil, 2, 0), status: protocol.StatusKeyNotFound, wantKey: "missing"},
		}},
		{"add", []step{
			{req: frame(protocol.OpAdd, "k", "v", setExtras(0, 0), 1, 0)},
			{req: frame(protocol.OpAdd, "k", "v", setExtras(0, 0), 1, 0), status: protocol.StatusKeyExists},
		}},
		{"replace", []step{
			{req: frame(protocol.OpReplace, "k", "v", setExtras(0, 0), 1, 0), status: protocol.StatusKeyNotFound},
			{req: frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 0)},
			{req: frame(protocol.OpReplace, "k", "w", setExtras(0, 0), 1, 0)},
			{req: frame(protocol.OpGet, "k", "", nil, 1, 0), value: "w", check: true},
		}},
		{"append prepend keep flags", []step{
			{req: frame(protocol.OpAppend, "k", "x", nil, 1, 0), status: protocol.StatusNotStored},
			{req: frame(protocol.OpSet, "k", "b", setExtras(7, 0), 1, 0)},
			{req: frame(protocol.OpAppend, "k", "c", nil, 1, 0)},
			{req: frame(protocol.OpPrepend, "k", "a", nil, 1, 0)},
			{req: frame(protocol.OpGet, "k", "", nil, 1, 0), value: "abc", check: true, extras: u32(7)},
		}},
		{"cas mismatch", []step{
			{req: frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 12345), status: protocol.StatusKeyNotFound},
			{req: frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 0)},
			{req: frame(protocol.OpSet, "k", "w", setExtras(0, 0), 1, 1<<60), status: protocol.StatusKeyExists},
			{req: frame(protocol.OpDelete, "k", "", nil, 1, 1<<60), status: protocol.StatusKeyExists},
		}},
		{"delete", []step{
			{req: frame(protocol.OpDelete, "k", "", nil, 1, 0), status: protocol.StatusKeyNotFound},
			{req: frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 0)},
			{req: frame(protocol.OpDelete, "k", "", nil, 1, 0)},
			{req: frame(protocol.OpGet, "k", "", nil, 1, 0), status: protocol.StatusKeyNotFound},
		}},
		{"incr decr", []step{
			{req: frame(protocol.OpIncrement, "n", "", arithExtras(1, 10, arithNoCreate), 1, 0), status: protocol.StatusKeyNotFound},
			{req: frame(protocol.OpIncrement, "n", "", arithExtras(1, 10, 0), 1, 0), value: "\x00\x00\x00\x00\x00\x00\x00\x0a", check: true},
			{req: frame(protocol.OpIncrement, "n", "", arithExtras(5, 10, 0), 1, 0), value: "\x00\x00\x00\x00\x00\x00\x00\x0f", check: true},
			{req: frame(protocol.OpDecrement, "n", "", arithExtras(100, 0, 0), 1, 0), value: "\x00\x00\x00\x00\x00\x00\x00\x00", check: true},
			{req: frame(protocol.OpGet, "n", "", nil, 1, 0), value: "0", check: true},
			{req: frame(protocol.OpSet, "big", "18446744073709551615", setExtras(0, 0), 1, 0)},
			{req: frame(protocol.OpIncrement, "big", "", arithExtras(2, 0, 0), 1, 0), value: "\x00\x00\x00\x00\x00\x00\x00\x01", check: true},
			{req: frame(protocol.OpSet, "s", "abc", setExtras(0, 0), 1, 0)},
			{req: frame(protocol.OpIncrement, "s", "", arithExtras(1, 0, 0), 1, 0), status: protocol.StatusNonNumeric},
		}},
		{"expiration absolute past and future", []step{
			{req: frame(protocol.OpSet, "old", "v", setExtras(0, past), 1, 0)},
			{req: frame(protocol.OpGet, "old", "", nil, 1, 0), status: protocol.StatusKeyNotFound},
			{req: frame(protocol.OpSet, "new", "v", setExtras(0, far), 1, 0)},
			{req: frame(protocol.OpGet, "new", "", nil, 1, 0), value: "v", check: true},
		}},
		{"touch and gat", []step{
			{req: frame(protocol.OpTouch, "k", "", u32(10), 1, 0), status: protocol.StatusKeyNotFound},
			{req: frame(protocol.OpSet, "k", "v", setExtras(3, 0), 1, 0)},
			{req: frame(protocol.OpTouch, "k", "", u32(100), 1, 0), extras: u32(3)},
			{req: frame(protocol.OpGAT, "k", "", u32(100), 1, 0), value: "v", check: true, extras: u32(3)},
			{req: frame(protocol.OpGATK, "k", "", u32(100), 1, 0), value: "v", check: true, wantKey: "k"},
			{req: frame(protocol.OpGAT, "k", "", u32(past), 1, 0), value: "v", check: true},
			{req: frame(protocol.OpGet, "k", "", nil, 1, 0), status: protocol.StatusKeyNotFound},
		}},
		{"flush", []step{
			{req: frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 0)},
			{req: frame(protocol.OpFlush, "", "", nil, 1, 0)},
			{req: frame(protocol.OpGet, "k", "", nil, 1, 0), status: protocol.StatusKeyNotFound},
			{req: frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 0)},
			{req: frame(protocol.OpFlush, "", "", u32(3600), 1, 0)},
			{req: frame(protocol.OpGet, "k", "", nil, 1, 0), value: "v", check: true},
		}},
		{"quiet forms", []step{
			{req: frame(protocol.OpSetQ, "k", "v", setExtras(0, 0), 1, 0), quiet: true},
			{req: frame(protocol.OpGetQ, "missing", "", nil, 1, 0), quiet: true},
			{req: frame(protocol.OpAddQ, "k", "v", setExtras(0, 0), 1, 0), status: protocol.StatusKeyExists},
			{req: frame(protocol.OpDeleteQ, "missing", "", nil, 1, 0), status: protocol.StatusKeyNotFound},
			{req: frame(protocol.OpGetKQ, "k", "", nil, 1, 0), value: "v", check: true, wantKey: "k"},
			{req: frame(protocol.OpIncrementQ, "n", "", arithExtras(1, 1, 0), 1, 0), quiet: true},
			{req: frame(protocol.OpNoop, "", "", nil, 9, 0)},
		}},
		{"noop version verbosity", []step{
			{req: frame(protocol.OpNoop, "", "", nil, 1, 0)},
			{req: frame(protocol.OpVersion, "", "", nil, 1, 0), value: defaultVersion, check: true},
			{req: frame(protocol.OpVerbosity, "", "", u32(1), 1, 0)},
		}},
		{"bad arguments", []step{
			{req: frame(protocol.OpGet, strings.Repeat("k", 251), "", nil, 1, 0), status: protocol.StatusInvalidArgs},
			{req: frame(protocol.OpSet, "k", "v", []byte{1, 2, 3}, 1, 0), status: protocol.StatusInvalidArgs},
			{req: frame(protocol.OpGet, "", "", nil, 1, 0), status: protocol.StatusInvalidArgs},
			{req: frame(protocol.OpIncrement, "k", "", make([]byte, 8), 1, 0), status: protocol.StatusInvalidArgs},
			{req: frame(protocol.OpNoop, "k", "", nil, 1, 0), status: protocol.StatusInvalidArgs},
			{req: frame(protocol.OpGet, "fine", "", nil, 1, 0), status: protocol.StatusKeyNotFound},
		}},
		{"unknown opcode keeps connection", []step{
			{req: frame(0x77, "", "", nil, 1, 0), status: protocol.StatusUnknownCommand},
			{req: frame(protocol.OpNoop, "", "", nil, 1, 0)},
		}},
		{"max-length key works", []step{
			{req: frame(protocol.OpSet, strings.Repeat("k", 250), "v", setExtras(0, 0), 1, 0)},
			{req: frame(protocol.OpGet, strings.Repeat("k", 250), "", nil, 1, 0), value: "v", check: true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, addr := testServer(t, nil)
			c := dial(t, addr)
			for i, s := range tt.steps {
				req, _, _ := protocol.Parse(s.req, protocol.MagicRequest, 1<<30)
				opaque := uint32(1000 + i)
				binary.BigEndian.PutUint32(s.req[12:16], opaque)
				if s.quiet {
					// A quiet success says nothing: the NOOP's answer comes first.
					c.send(s.req, frame(protocol.OpNoop, "", "", nil, 0xabc, 0))
					if res := c.read(); res.Opcode != protocol.OpNoop || res.Opaque != 0xabc {
						t.Fatalf("step %d (%v): quiet command answered %v status %#x", i, req.Opcode, res.Opcode, res.Status())
					}
					continue
				}
				res := c.do(s.req)
				if res.Opcode != req.Opcode || res.Opaque != opaque {
					t.Fatalf("step %d: response opcode %v opaque %d for %v opaque %d", i, res.Opcode, res.Opaque, req.Opcode, opaque)
				}
				if res.Status() != s.status {
					t.Fatalf("step %d (%v %q): status %#x %q, want %#x", i, req.Opcode, req.Key, res.Status(), res.Value, s.status)
				}
				if s.check && string(res.Value) != s.value {
					t.Errorf("step %d (%v): value %q, want %q", i, req.Opcode, res.Value, s.value)
				}
				if s.extras != nil && !bytes.Equal(res.Extras, s.extras) {
					t.Errorf("step %d (%v): extras %x, want %x", i, req.Opcode, res.Extras, s.extras)
				}
				if s.wantKey != "" && string(res.Key) != s.wantKey {
					t.Errorf("step %d (%v): key %q, want %q", i, req.Opcode, res.Key, s.wantKey)
				}
				if s.status == protocol.StatusOK && res.Opcode.Loud() != protocol.OpNoop && isMutation(req.Opcode) && res.CAS == 0 {
					t.Errorf("step %d (%v): no CAS on a mutation", i, req.Opcode)
				}
			}
		})
	}
}

func isMutation(op protocol.Opcode) bool {
	switch op.Loud() {
	case protocol.OpSet, protocol.OpAdd, protocol.OpReplace, protocol.OpAppend, protocol.OpPrepend,
		protocol.OpIncrement, protocol.OpDecrement:
		return true
	}
	return false
}

func TestCASRoundTrip(t *testing.T) {
	_, addr := testServer(t, nil)
	c := dial(t, addr)
	set := c.do(frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 0))
	get := c.do(frame(protocol.OpGet, "k", "", nil, 2, 0))
	if set.CAS == 0 || get.CAS != set.CAS {
		t.Fatalf("set CAS %d, get CAS %d", set.CAS, get.CAS)
	}
	if res := c.do(frame(protocol.OpSet, "k", "w", setExtras(0, 0), 3, get.CAS)); res.Status() != protocol.StatusOK || res.CAS == get.CAS {
		t.Fatalf("CAS set: status %#x cas %d", res.Status(), res.CAS)
	}
	if res := c.do(frame(protocol.OpSet, "k", "x", setExtras(0, 0), 4, get.CAS)); res.Status() != protocol.StatusKeyExists {
		t.Fatalf("stale CAS set: status %#x", res.Status())
	}
}

func TestDataTypeStored(t *testing.T) {
	_, addr := testServer(t, nil)
	c := dial(t, addr)
	f := frame(protocol.OpSet, "doc", `{"a":1}`, setExtras(0, 0), 1, 0)
	f[5] = protocol.DataTypeJSON
	if res := c.do(f); res.Status() != protocol.StatusOK {
		t.Fatal(res.Status())
	}
	if res := c.do(frame(protocol.OpGet, "doc", "", nil, 2, 0)); res.DataType != protocol.DataTypeJSON {
		t.Fatalf("data type %#x, want JSON", res.DataType)
	}
}

// TestPipelineOrder sends a multi-get the way libmemcached does, GETKQ for
// each key then NOOP, in one write: hits come back in request order, misses
// say nothing, and NOOP closes the batch.
func TestPipelineOrder(t *testing.T) {
	_, addr := testServer(t, nil)
	c := dial(t, addr)
	var batch [][]byte
	for i := range 200 {
		if i%3 != 0 {
			batch = append(batch, frame(protocol.OpSetQ, key(i), "value-"+key(i), setExtras(uint32(i), 0), 0, 0))
		}
	}
	for i := range 200 {
		batch = append(batch, frame(protocol.OpGetKQ, key(i), "", nil, uint32(i), 0))
	}
	batch = append(batch, frame(protocol.OpNoop, "", "", nil, 9999, 0))
	c.send(batch...)
	for i := range 200 {
		if i%3 == 0 {
			continue
		}
		res := c.read()
		if res.Opcode != protocol.OpGetKQ || res.Opaque != uint32(i) || string(res.Key) != key(i) || string(res.Value) != "value-"+key(i) {
			t.Fatalf("response %d: %v opaque %d key %q value %q", i, res.Opcode, res.Opaque, res.Key, res.Value)
		}
	}
	if res := c.read(); res.Opcode != protocol.OpNoop || res.Opaque != 9999 {
		t.Fatalf("last response %v opaque %d, want NOOP 9999", res.Opcode, res.Opaque)
	}
}

func key(i int) string { return "key:" + strconv.Itoa(i) }

// TestFrameSplitAcrossReads delivers requests a byte at a time.
func TestFrameSplitAcrossReads(t *testing.T) {
	_, addr := testServer(t, nil)
	c := dial(t, addr)
	f := append(frame(protocol.OpSet, "k", strings.Repeat("v", 20000), setExtras(0, 0), 1, 0), frame(protocol.OpGet, "k", "", nil, 2, 0)...)
	for i := 0; i < len(f); i += 997 {
		c.send(f[i:min(i+997, len(f))])
	}
	if res := c.read(); res.Status() != protocol.StatusOK {
		t.Fatal(res.Status())
	}
	if res := c.read(); len(res.Value) != 20000 {
		t.Fatalf("got %d bytes", len(res.Value))
	}
}

func TestTooLargeValue(t *testing.T) {
	_, addr := testServer(t, func(cfg *Config) { cfg.MaxItemSize = 1 << 20 })
	c := dial(t, addr)
	c.do(frame(protocol.OpSet, "k", "old", setExtras(0, 0), 1, 0))
	t.Run("body over the frame limit is skipped unbuffered", func(t *testing.T) {
		huge := frame(protocol.OpSet, "k", strings.Repeat("x", 3<<20), setExtras(0, 0), 7, 0)
		c.send(huge)
		if res := c.read(); res.Status() != protocol.StatusValueTooLarge || res.Opaque != 7 {
			t.Fatalf("status %#x opaque %d", res.Status(), res.Opaque)
		}
		if res := c.do(frame(protocol.OpGet, "k", "", nil, 8, 0)); res.Status() != protocol.StatusKeyNotFound {
			t.Fatalf("old value survived a failed SET: status %#x", res.Status())
		}
	})
	t.Run("value just over the item limit", func(t *testing.T) {
		c.do(frame(protocol.OpSet, "k", "old", setExtras(0, 0), 1, 0))
		res := c.do(frame(protocol.OpSet, "k", strings.Repeat("x", 1<<20), setExtras(0, 0), 9, 0))
		if res.Status() != protocol.StatusValueTooLarge {
			t.Fatalf("status %#x", res.Status())
		}
		if res := c.do(frame(protocol.OpGet, "k", "", nil, 8, 0)); res.Status() != protocol.StatusKeyNotFound {
			t.Fatalf("old value survived a failed SET: status %#x", res.Status())
		}
	})
	t.Run("largest value fits", func(t *testing.T) {
		v := strings.Repeat("y", 1<<20-1)
		if res := c.do(frame(protocol.OpSet, "k", v, setExtras(0, 0), 9, 0)); res.Status() != protocol.StatusOK {
			t.Fatalf("status %#x", res.Status())
		}
		if res := c.do(frame(protocol.OpGet, "k", "", nil, 8, 0)); string(res.Value) != v {
			t.Fatalf("got %d bytes", len(res.Value))
		}
	})
}

func TestMalformedFramesClose(t *testing.T) {
	_, addr := testServer(t, nil)
	t.Run("bad magic", func(t *testing.T) {
		c := dial(t, addr)
		c.send([]byte("get foo\r\n"))
		c.expectClosed()
	})
	t.Run("lengths exceed body", func(t *testing.T) {
		c := dial(t, addr)
		f := protocol.AppendHeader(nil, protocol.MagicRequest, protocol.OpGet, 100, 0, 0, 0, 4, 5, 0)
		c.send(append(f, "abcd"...))
		if res := c.read(); res.Status() != protocol.StatusInvalidArgs || res.Opaque != 5 {
			t.Fatalf("status %#x", res.Status())
		}
		c.expectClosed()
	})
	t.Run("server still serves", func(t *testing.T) {
		c := dial(t, addr)
		if res := c.do(frame(protocol.OpNoop, "", "", nil, 1, 0)); res.Status() != protocol.StatusOK {
			t.Fatal(res.Status())
		}
	})
}

// TestDisconnectMidFrame: clients that vanish halfway through a frame, with
// a large body declared, leave the server serving.
func TestDisconnectMidFrame(t *testing.T) {
	srv, addr := testServer(t, nil)
	for range 50 {
		c := dial(t, addr)
		f := frame(protocol.OpSet, "k", strings.Repeat("x", 900<<10), setExtras(0, 0), 1, 0)
		c.send(f[:protocol.HeaderLen+100])
		c.nc.Close()
	}
	waitFor(t, func() bool { return srv.currConns.Load() == 0 })
	c := dial(t, addr)
	if res := c.do(frame(protocol.OpNoop, "", "", nil, 1, 0)); res.Status() != protocol.StatusOK {
		t.Fatal(res.Status())
	}
}

func TestQuit(t *testing.T) {
	_, addr := testServer(t, nil)
	c := dial(t, addr)
	c.send(frame(protocol.OpSetQ, "k", "v", setExtras(0, 0), 1, 0), frame(protocol.OpQuit, "", "", nil, 2, 0), frame(protocol.OpNoop, "", "", nil, 3, 0))
	if res := c.read(); res.Opcode != protocol.OpQuit || res.Opaque != 2 {
		t.Fatalf("%v %d", res.Opcode, res.Opaque)
	}
	c.expectClosed()
	c = dial(t, addr)
	c.send(frame(protocol.OpQuitQ, "", "", nil, 2, 0))
	c.expectClosed()
}

func TestMaxConns(t *testing.T) {
	srv, addr := testServer(t, func(cfg *Config) { cfg.MaxConns = 2 })
	a, b := dial(t, addr), dial(t, addr)
	a.do(frame(protocol.OpNoop, "", "", nil, 1, 0))
	b.do(frame(protocol.OpNoop, "", "", nil, 1, 0))
	c := dial(t, addr)
	c.send(frame(protocol.OpNoop, "", "", nil, 1, 0))
	c.expectClosed()
	if srv.rejectedConns.Load() != 1 {
		t.Fatalf("rejected_connections = %d", srv.rejectedConns.Load())
	}
	a.nc.Close()
	waitFor(t, func() bool { return srv.currConns.Load() == 1 })
	d := dial(t, addr)
	if res := d.do(frame(protocol.OpNoop, "", "", nil, 1, 0)); res.Status() != protocol.StatusOK {
		t.Fatal(res.Status())
	}
}

func TestAuth(t *testing.T) {
	_, addr := testServer(t, func(cfg *Config) { cfg.Users = map[string]string{"alice": "s3cret"} })
	c := dial(t, addr)
	for _, op := range []protocol.Opcode{protocol.OpNoop, protocol.OpVersion, protocol.OpSASLListMechs} {
		if res := c.do(frame(op, "", "", nil, 1, 0)); res.Status() != protocol.StatusOK {
			t.Fatalf("%v before auth: %#x", op, res.Status())
		}
	}
	if res := c.do(frame(protocol.OpSASLListMechs, "", "", nil, 1, 0)); string(res.Value) != "PLAIN" {
		t.Fatalf("mechs %q", res.Value)
	}
	if res := c.do(frame(protocol.OpGet, "k", "", nil, 1, 0)); res.Status() != protocol.StatusAuthError {
		t.Fatalf("GET before auth: %#x", res.Status())
	}
	if res := c.do(frame(protocol.OpSASLAuth, "PLAIN", "\x00alice\x00wrong", nil, 1, 0)); res.Status() != protocol.StatusAuthError {
		t.Fatalf("wrong password: %#x", res.Status())
	}
	if res := c.do(frame(protocol.OpSASLAuth, "CRAM-MD5", "alice s3cret", nil, 1, 0)); res.Status() != protocol.StatusAuthError {
		t.Fatalf("unsupported mechanism: %#x", res.Status())
	}
	if res := c.do(frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 0)); res.Status() != protocol.StatusAuthError {
		t.Fatalf("SET after failed auth: %#x", res.Status())
	}
	if res := c.do(frame(protocol.OpSASLAuth, "PLAIN", "\x00alice\x00s3cret", nil, 1, 0)); res.Status() != protocol.StatusOK {
		t.Fatalf("right password: %#x", res.Status())
	}
	if res := c.do(frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 0)); res.Status() != protocol.StatusOK {
		t.Fatalf("SET after auth: %#x", res.Status())
	}
}

func TestParseUsers(t *testing.T) {
	tests := []struct {
		name, in string
		want     map[string]string
		wantErr  bool
	}{
		{"users", "alice:pw\n# comment\n\nbob:p:w\r\n", map[string]string{"alice": "pw", "bob": "p:w"}, false},
		{"no colon", "alice\n", nil, true},
		{"empty user", ":pw\n", nil, true},
		{"duplicate", "a:1\na:2\n", nil, true},
		{"empty file", "\n# nobody\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseUsers(strings.NewReader(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s: %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func TestSeconds(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0.000000", 7 * time.Microsecond: "0.000007", 1500 * time.Millisecond: "1.500000",
		62*time.Second + 345678*time.Microsecond + 999: "62.345678",
	} {
		if got := string(seconds(d)); got != want {
			t.Errorf("seconds(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestStats(t *testing.T) {
	srv, addr := testServer(t, nil)
	c := dial(t, addr)
	c.do(frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 0))
	c.do(frame(protocol.OpGet, "k", "", nil, 1, 0))
	c.do(frame(protocol.OpGet, "nope", "", nil, 1, 0))
	c.do(frame(protocol.OpDelete, "nope", "", nil, 1, 0))
	stats := readStats(t, c, "")
	for name, want := range map[string]string{
		"cmd_get": "2", "get_hits": "1", "get_misses": "1", "cmd_set": "1", "delete_misses": "1",
		"curr_items": "1", "total_items": "1", "curr_connections": "1", "limit_maxbytes": "67108864",
	} {
		if stats[name] != want {
			t.Errorf("%s = %q, want %q", name, stats[name], want)
		}
	}
	for _, name := range []string{"pid", "uptime", "time", "version", "total_connections", "cmd_flush", "cmd_touch",
		"delete_hits", "incr_hits", "incr_misses", "decr_hits", "decr_misses", "cas_hits", "cas_misses", "cas_badval",
		"bytes", "evictions", "expired_unfetched", "rusage_user"} {
		if _, ok := stats[name]; !ok {
			t.Errorf("stat %s missing", name)
		}
	}
	for _, name := range []string{"rusage_user", "rusage_system"} { // as memcached writes them
		if !regexp.MustCompile(`^[0-9]+\.[0-9]{6}$`).MatchString(stats[name]) {
			t.Errorf("%s = %q, want seconds.microseconds", name, stats[name])
		}
	}
	settings := readStats(t, c, "settings")
	if settings["item_size_max"] != "1048576" || settings["maxconns"] != "4096" {
		t.Errorf("settings %v", settings)
	}
	readStats(t, c, "reset")
	if s := readStats(t, c, ""); s["cmd_get"] != "0" {
		t.Errorf("after reset cmd_get = %q", s["cmd_get"])
	}
	c.do(frame(protocol.OpGet, "k", "", nil, 1, 0))
	if s := readStats(t, c, ""); s["cmd_get"] != "1" || s["get_hits"] != "1" || s["get_misses"] != "0" {
		t.Errorf("a GET after reset: cmd_get %q, get_hits %q, get_misses %q; want 1, 1, 0", s["cmd_get"], s["get_hits"], s["get_misses"])
	}
	// The counters behind STAT never go down: /metrics exports them.
	if got := srv.snapshot()[cCmdGet]; got != 3 {
		t.Errorf("counted %d GETs since start, want 3", got)
	}
	if res := c.do(frame(protocol.OpStat, "nosuchgroup", "", nil, 1, 0)); res.Status() != protocol.StatusKeyNotFound {
		t.Errorf("unknown group: %#x", res.Status())
	}
}

func readStats(t *testing.T, c *client, group string) map[string]string {
	t.Helper()
	c.send(frame(protocol.OpStat, group, "", nil, 42, 0))
	stats := map[string]string{}
	for {
		res := c.read()
		if res.Status() != protocol.StatusOK || res.Opaque != 42 {
			t.Fatalf("stat: status %#x opaque %d", res.Status(), res.Opaque)
		}
		if len(res.Key) == 0 {
			return stats
		}
		stats[string(res.Key)] = string(res.Value)
	}
}

// TestShutdownFinishesInFlight: requests a client already sent are answered
// before the connection closes, and Serve returns ErrServerClosed.
func TestShutdownFinishesInFlight(t *testing.T) {
	st, _ := store.New(store.Config{})
	defer st.Close()
	srv, err := New(Config{Store: st, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	c := dial(t, l.Addr().String())
	c.do(frame(protocol.OpNoop, "", "", nil, 1, 0)) // the connection is being served
	var batch [][]byte
	for i := range 1000 {
		batch = append(batch, frame(protocol.OpSet, key(i), strings.Repeat("v", 100), setExtras(0, 0), uint32(i), 0))
	}
	c.send(batch...)
	waitFor(t, func() bool { return srv.snapshot()[cCmdSet] > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	// Every request the server read has its answer; whatever it had not read
	// when it stopped is not half-answered.
	got := 0
	for ; got < 1000; got++ {
		hdr := make([]byte, protocol.HeaderLen)
		if _, err := io.ReadFull(c.r, hdr); err != nil {
			break
		}
		if h := protocol.ParseHeader(hdr); h.Opaque != uint32(got) || h.Status() != protocol.StatusOK {
			t.Fatalf("response %d: opaque %d status %#x", got, h.Opaque, h.Status())
		}
	}
	if sets := srv.snapshot()[cCmdSet]; uint64(got) != sets {
		t.Fatalf("%d responses for %d SETs handled", got, sets)
	}
	if _, err := net.Dial("tcp", l.Addr().String()); err == nil {
		t.Fatal("listener still accepting")
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDispatchAllocs pins the common request paths, parse to response, at
// zero allocations.
func TestDispatchAllocs(t *testing.T) {
	st, _ := store.New(store.Config{})
	defer st.Close()
	srv, _ := New(Config{Store: st})
	c := newConn(srv, nil)
	srv.ownStats(c)
	value := strings.Repeat("v", 100)
	st.Set(store.ModeSet, []byte("key"), []byte(value), 0, 0, 0, 0)
	st.Set(store.ModeSet, []byte("counter"), []byte("1"), 0, 0, 0, 0)
	for _, tt := range []struct {
		name    string
		f       []byte
		respLen int
	}{
		{"get hit", frame(protocol.OpGet, "key", "", nil, 1, 0), protocol.HeaderLen + 4 + 100},
		{"get miss", frame(protocol.OpGet, "nope", "", nil, 1, 0), protocol.HeaderLen + len("Not found")},
		{"getq miss", frame(protocol.OpGetQ, "nope", "", nil, 1, 0), 0},
		{"getk hit", frame(protocol.OpGetK, "key", "", nil, 1, 0), protocol.HeaderLen + 4 + 3 + 100},
		{"set same size", frame(protocol.OpSet, "key", value, setExtras(0, 0), 1, 0), protocol.HeaderLen},
		{"setq same size", frame(protocol.OpSetQ, "key", value, setExtras(0, 0), 1, 0), 0},
		{"incr", frame(protocol.OpIncrement, "counter", "", arithExtras(1, 0, 0), 1, 0), protocol.HeaderLen + 8},
		{"touch", frame(protocol.OpTouch, "key", "", u32(0), 1, 0), protocol.HeaderLen + 4}, // flags, as memcached
		{"delete miss", frame(protocol.OpDelete, "nope", "", nil, 1, 0), protocol.HeaderLen + len("Not found")},
		{"noop", frame(protocol.OpNoop, "", "", nil, 1, 0), protocol.HeaderLen},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := testing.AllocsPerRun(1000, func() {
				req, _, _ := protocol.Parse(tt.f, protocol.MagicRequest, srv.maxBody)
				c.wbuf = c.wbuf[:0]
				c.handle(&req)
			})
			if n != 0 {
				t.Fatalf("%s allocates %v times", tt.name, n)
			}
			if len(c.wbuf) != tt.respLen {
				t.Fatalf("response is %d bytes, want %d", len(c.wbuf), tt.respLen)
			}
		})
	}
}

func BenchmarkDispatch(b *testing.B) {
	st, _ := store.New(store.Config{})
	defer st.Close()
	srv, _ := New(Config{Store: st})
	c := newConn(srv, nil)
	srv.ownStats(c)
	value := bytes.Repeat([]byte("v"), 100)
	st.Set(store.ModeSet, []byte("key:00000001"), value, 0, 0, 0, 0)
	for _, bc := range []struct {
		name string
		f    []byte
	}{
		{"op=get-hit/value=100B", frame(protocol.OpGet, "key:00000001", "", nil, 1, 0)},
		{"op=get-miss", frame(protocol.OpGet, "key:00000002", "", nil, 1, 0)},
		{"op=set/value=100B", frame(protocol.OpSet, "key:00000001", string(value), setExtras(0, 0), 1, 0)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req, _, _ := protocol.Parse(bc.f, protocol.MagicRequest, srv.maxBody)
				c.wbuf = c.wbuf[:0]
				c.handle(&req)
			}
		})
	}
}

// TestTranslate pins what a forwarded response becomes for the client: the
// client's opcode and opaque, and nothing where the quiet form is silent.
func TestTranslate(t *testing.T) {
	resp := func(op protocol.Opcode, st protocol.Status) []byte {
		return protocol.AppendHeader(nil, protocol.MagicResponse, op, 0, 0, 0, uint16(st), 0, 99, 5)
	}
	for _, tt := range []struct {
		name   string
		client protocol.Opcode
		st     protocol.Status
		sent   bool
	}{
		{"GETKQ hit", protocol.OpGetKQ, protocol.StatusOK, true},
		{"GETKQ miss", protocol.OpGetKQ, protocol.StatusKeyNotFound, false},
		{"GETQ miss", protocol.OpGetQ, protocol.StatusKeyNotFound, false},
		{"GATQ miss", protocol.OpGATQ, protocol.StatusKeyNotFound, false},
		{"GET miss", protocol.OpGet, protocol.StatusKeyNotFound, true},
		{"SETQ ok", protocol.OpSetQ, protocol.StatusOK, false},
		{"SETQ exists", protocol.OpSetQ, protocol.StatusKeyExists, true},
		{"DELETEQ miss", protocol.OpDeleteQ, protocol.StatusKeyNotFound, true},
		{"INCREMENTQ ok", protocol.OpIncrementQ, protocol.StatusOK, false},
		{"SET ok", protocol.OpSet, protocol.StatusOK, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := protocol.Request{Header: protocol.Header{Opcode: tt.client, Opaque: 7}}
			out := translate([]byte("prefix"), resp(tt.client.Loud(), tt.st), &req)
			if !bytes.HasPrefix(out, []byte("prefix")) {
				t.Fatal("earlier output lost")
			}
			out = out[len("prefix"):]
			if sent := len(out) > 0; sent != tt.sent {
				t.Fatalf("sent = %v, want %v", sent, tt.sent)
			}
			if tt.sent {
				h := protocol.ParseHeader(out)
				if h.Opcode != tt.client || h.Opaque != 7 || h.Status() != tt.st || h.CAS != 5 {
					t.Fatalf("response %+v: want opcode %s, opaque 7, status %d, CAS kept", h, tt.client, tt.st)
				}
			}
		})
	}
}
