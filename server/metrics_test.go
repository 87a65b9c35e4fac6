package server

import (
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"vbcache/protocol"
	"vbcache/store"
)

// TestOpRows: every opcode protocol knows is counted in its loud form's
// row, every other in the UNKNOWN row.
func TestOpRows(t *testing.T) {
	for i := range 256 {
		op := protocol.Opcode(i)
		row := int(opCells[op].row) / numStatusCols
		switch {
		case !op.Known() && row != len(opRows):
			t.Errorf("unknown opcode %#x counted as %s", i, opRows[row])
		case op.Known() && (row == len(opRows) || opRows[row] != op.Loud()):
			t.Errorf("%s counted in row %d, want %s's", op, row, op.Loud())
		}
	}
	for _, tt := range []struct {
		op     protocol.Opcode
		silent string
	}{{protocol.OpGetQ, "key_not_found"}, {protocol.OpGATKQ, "key_not_found"}, {protocol.OpSetQ, "success"}} {
		cell := opCells[tt.op]
		if got := statusCols[cell.silent-cell.row].name; got != tt.silent {
			t.Errorf("%s answering nothing counts as %s, want %s", tt.op, got, tt.silent)
		}
	}
	for i, c := range statusCols {
		if got := statusCol[c.st]; int(got) != i {
			t.Errorf("%s in column %d, want %d", c.name, got, i)
		}
	}
	if got := statusCol[0x30]; int(got) != len(statusCols) {
		t.Errorf("status 0x30 in column %d, want other", got)
	}
}

func TestLatencyBucket(t *testing.T) {
	last := latencyMin << (numLatencyBounds - 1) // 1.31072 s
	for _, tt := range []struct {
		d    time.Duration
		want int
	}{
		{0, 0}, {latencyMin, 0}, {latencyMin + 1, 1}, {2 * latencyMin, 1}, {2*latencyMin + 1, 2},
		{3 * latencyMin, 2}, {4 * latencyMin, 2}, {5 * latencyMin, 3}, {last, numLatencyBounds - 1},
		{last + 1, numLatencyBounds}, {time.Hour, numLatencyBounds},
	} {
		t.Run(tt.d.String(), func(t *testing.T) {
			if got := latencyBucket(tt.d); got != tt.want {
				t.Fatalf("bucket %d, want %d", got, tt.want)
			}
		})
	}
}

// TestTally: a batch of many kinds of requests, more than a tally holds,
// counted from its output in pieces, is counted exactly, and its latency
// once per request.
func TestTally(t *testing.T) {
	st, _ := store.New(store.Config{})
	defer st.Close()
	srv, _ := New(Config{Store: st})
	c := newConn(srv, nil)
	srv.ownStats(c)
	// cell places a request as the tables should, found another way.
	cell := func(op protocol.Opcode, s protocol.Status) int {
		row := slices.Index(opRows[:], op.Loud())
		if !op.Known() {
			row = len(opRows)
		}
		col := slices.IndexFunc(statusCols[:], func(c statusName) bool { return c.st == s })
		if col < 0 {
			col = len(statusCols)
		}
		return row*numStatusCols + col
	}
	want := map[int]uint64{}
	ops := []protocol.Opcode{protocol.OpGet, protocol.OpSet, protocol.OpGetQ, protocol.OpNoop, 0x50}
	statuses := []protocol.Status{protocol.StatusOK, protocol.StatusKeyNotFound, protocol.StatusTempFailure, 0x1234}
	requests := 0
	for batch := range 3 {
		c.readAt = time.Now()
		for i := range 50 + batch {
			op, s := ops[i%len(ops)], statuses[(i/3)%len(statuses)]
			switch {
			case i%7 == 0: // a quiet request that answered nothing
				c.countSilent(op)
				s = protocol.StatusOK
				if isGet(op) {
					s = protocol.StatusKeyNotFound
				}
			case i%11 == 0: // STAT: one request, many frames
				op, s = protocol.OpStat, protocol.StatusOK
				for _, name := range []string{"pid", "uptime", ""} {
					c.appendStat(&protocol.Request{Header: protocol.Header{Opcode: op}}, name, []byte("1"))
				}
			default:
				c.wbuf = protocol.AppendError(c.wbuf, op, s, 0)
			}
			want[cell(op, s)]++
			requests++
			if i%10 == 0 {
				c.countOutput()
			}
		}
		c.countOutput()
		c.wbuf, c.counted = c.wbuf[:0], 0
		c.endBatch()
	}
	var sum reqTotals
	c.own.addTo(&sum)
	for cell, n := range sum.ops {
		if n != want[cell] {
			t.Errorf("cell %d (row %d, column %d) counts %d, want %d", cell, cell/numStatusCols, cell%numStatusCols, n, want[cell])
		}
	}
	var latencies uint64
	for _, n := range sum.latency {
		latencies += n
	}
	if latencies != uint64(requests) {
		t.Errorf("%d latencies recorded for %d requests", latencies, requests)
	}
}

// TestMetricsCountRequests: real connections, served by event loops or by
// goroutines of their own, are counted by opcode and status, and every
// request's latency is recorded, including those of a connection that has
// ended.
func TestMetricsCountRequests(t *testing.T) {
	forEachMode(t, func(t *testing.T, mod func(*Config)) {
		srv, addr := testServer(t, mod)
		c := dial(t, addr)
		c.do(frame(protocol.OpSet, "k", "v", setExtras(0, 0), 1, 0))
		c.do(frame(protocol.OpGet, "k", "", nil, 1, 0))
		c.do(frame(protocol.OpGet, "nope", "", nil, 1, 0))
		c.send(frame(protocol.OpGetQ, "nope", "", nil, 1, 0), frame(protocol.OpSetQ, "k", "v", setExtras(0, 0), 1, 0),
			frame(protocol.OpNoop, "", "", nil, 1, 0))
		if res := c.read(); res.Opcode != protocol.OpNoop {
			t.Fatalf("GETQ miss, SETQ, NOOP answered %s", res.Opcode)
		}
		c.do(frame(protocol.Opcode(0x50), "", "", nil, 1, 0))
		c.do(frame(protocol.OpDelete, "nope", "", nil, 1, 0))
		// A connection that ends: on a loop it is handed off to close.
		ended := dial(t, addr)
		ended.do(frame(protocol.OpGet, "k", "", nil, 1, 0))
		ended.do(frame(protocol.OpQuit, "", "", nil, 1, 0))
		ended.expectClosed()
		const requests = 10

		waitFor(t, func() bool { return srv.currConns.Load() == 1 && srv.Metrics().Latency.Count == requests })
		m := srv.Metrics()
		got := map[string]uint64{}
		for _, oc := range m.Ops {
			got[oc.Opcode+"/"+oc.Status] = oc.Count
		}
		want := map[string]uint64{
			"SET/success": 2, "GET/success": 2, "GET/key_not_found": 2, "NOOP/success": 1,
			"UNKNOWN/unknown_command": 1, "DELETE/key_not_found": 1, "QUIT/success": 1,
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("ops %v\nwant %v", got, want)
		}
		if m.GetHits != 2 || m.GetMisses != 2 {
			t.Errorf("get hits %d, misses %d; want 2, 2", m.GetHits, m.GetMisses)
		}
		h := m.Latency
		if len(h.Bounds) != numLatencyBounds || len(h.Counts) != numLatencyBounds+1 || h.Bounds[0] != 10e-6 {
			t.Fatalf("histogram bounds %v, counts %v", h.Bounds, h.Counts)
		}
		if h.Sum <= 0 || h.Sum > 10*requests {
			t.Errorf("latency sum %vs for %d requests", h.Sum, requests)
		}
	})
}

// TestPeerLag: stream messages a peer has not acknowledged are the
// replication lag towards it; forwarded requests are not.
func TestPeerLag(t *testing.T) {
	// The peer answers HELLO, then holds every request until told to
	// answer them; then it answers as a node does: nothing for a quiet
	// copy, which the NOOP after it acknowledges.
	answer := make(chan struct{})
	addr := fakePeer(t, func(h protocol.Header, _ []byte) []byte {
		if h.Opcode != protocol.OpHello {
			<-answer
		}
		if h.Opcode.IsQuiet() {
			return nil
		}
		return okResponse(h)
	})

	p := newPeers(nil, slog.New(slog.DiscardHandler))
	defer p.close()
	w := newWaiter()
	get := frame(protocol.OpGet, "k", "", nil, 0, 0)
	setMeta := protocol.AppendFrame(nil, &protocol.Frame{Magic: protocol.MagicRequest, Opcode: protocol.OpSetWithMeta,
		Extras: make([]byte, 24), Key: []byte("k"), Value: []byte("v")})
	calls := []*call{
		p.send(addr, get, protocol.OpGet, w),
		p.send(addr, setMeta, protocol.OpSetWithMeta, w),
		p.send(addr, setMeta, protocol.OpSetWithMeta, w),
	}
	waitFor(t, func() bool { lags := p.lag(); return len(lags) == 1 && lags[0].Oldest >= time.Millisecond })
	if lags := p.lag(); lags[0].Peer != addr || lags[0].Copies != 2 {
		t.Fatalf("lag %+v, want 2 copies to %s", lags, addr)
	}
	close(answer)
	for _, cl := range calls {
		if resp, err := w.wait(cl); err != nil || respStatus(resp) != protocol.StatusOK {
			t.Fatalf("call: %v", err)
		}
	}
	if lags := p.lag(); lags[0].Copies != 0 || lags[0].Oldest != 0 {
		t.Fatalf("lag %+v once every copy is acknowledged", lags)
	}
}

// TestEveryRequestCounted: every opcode, known or not, loud or quiet,
// answered or silent, is counted once in its row: a loud request always
// answers, and handle counts a quiet one that does not.
func TestEveryRequestCounted(t *testing.T) {
	st, _ := store.New(store.Config{})
	defer st.Close()
	srv, _ := New(Config{Store: st})
	c := newConn(srv, nil)
	srv.ownStats(c)
	rowCount := func(row int) (n uint64) {
		var sum reqTotals
		c.own.addTo(&sum)
		for _, v := range sum.ops[row*numStatusCols : (row+1)*numStatusCols] {
			n += v
		}
		return n
	}
	for i := range 256 {
		op := protocol.Opcode(i)
		// A well-formed request, so that quiet ones succeed silently.
		var extras []byte
		key, value := "k", "1"
		switch op.Loud() {
		case protocol.OpSet, protocol.OpAdd, protocol.OpReplace:
			extras = setExtras(0, 0)
		case protocol.OpIncrement, protocol.OpDecrement:
			extras, value = arithExtras(1, 0, 0), ""
		case protocol.OpTouch, protocol.OpGAT, protocol.OpGATK, protocol.OpVerbosity:
			extras, value = u32(0), ""
		case protocol.OpGet, protocol.OpGetK, protocol.OpDelete:
			value = ""
		case protocol.OpGetErrorMap:
			key, value = "", "\x00\x01"
		case protocol.OpHello:
			value = ""
		case protocol.OpSASLAuth:
			key, value = "PLAIN", "\x00u\x00p"
		case protocol.OpSelectBucket:
			key = bucketName
		case protocol.OpNoop, protocol.OpVersion, protocol.OpQuit, protocol.OpFlush, protocol.OpStat,
			protocol.OpSASLListMechs, protocol.OpGetClusterConfig, protocol.OpGetVBucket:
			key, value = "", ""
		}
		if op.Loud() == protocol.OpGet || op.Loud() == protocol.OpGAT || op == protocol.OpGetK || op == protocol.OpGATK {
			key = "missing" // a quiet GET misses silently; a loud one answers
		}
		st.Set(store.ModeSet, []byte("k"), []byte("1"), 0, 0, 0, 0)
		row := int(opCells[op].row) / numStatusCols
		before := rowCount(row)
		req, _, err := protocol.Parse(frame(op, key, value, extras, 1, 0), protocol.MagicRequest, srv.maxBody)
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		c.readAt = time.Now()
		c.handle(&req)
		c.countOutput()
		c.wbuf, c.counted = c.wbuf[:0], 0
		c.endBatch()
		if got := rowCount(row) - before; got != 1 {
			t.Errorf("opcode %#x (%s) counted %d times", i, op, got)
		}
	}
}
