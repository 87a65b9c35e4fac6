package server

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"vbcache/protocol"
	"vbcache/store"
)

// TestQuietCopies: copies go to a peer as quiet requests followed by a
// NOOP. The peer here answers as a node does: nothing for a quiet success,
// an error for a refused copy, a response for every loud request. Each
// call must get its own outcome: the refused copy its error, a loud
// request (DEL_VBUCKET, a stream message sent loud) its response, and
// every other copy success once a later response shows the peer has
// handled it.
func TestQuietCopies(t *testing.T) {
	received := make(chan protocol.Opcode, 16)
	addr := fakePeer(t, func(h protocol.Header, body []byte) []byte {
		if h.Opcode != protocol.OpHello {
			received <- h.Opcode
		}
		key := string(body[h.ExtrasLen : int(h.ExtrasLen)+int(h.KeyLen)])
		switch {
		case key == "refused":
			return protocol.AppendError(nil, h.Opcode, protocol.StatusNotMyVBucket, h.Opaque)
		case h.Opcode.IsQuiet():
			return nil
		}
		return protocol.AppendFrame(nil, &protocol.Frame{
			Magic: protocol.MagicResponse, Opcode: h.Opcode, Opaque: h.Opaque, Value: []byte("answer to " + key),
		})
	})

	p := newPeers(nil, slog.New(slog.DiscardHandler))
	w := newWaiter()
	copyOf := func(key string) []byte {
		return protocol.AppendFrame(nil, &protocol.Frame{Magic: protocol.MagicRequest, Opcode: protocol.OpSetWithMeta,
			Extras: make([]byte, 24), Key: []byte(key), Value: []byte("v")})
	}
	// One batch, as a client connection queues it, kicked once.
	var calls []*call
	for _, r := range []struct {
		key string
		op  protocol.Opcode
	}{
		{"a", protocol.OpSetWithMeta}, {"refused", protocol.OpSetWithMeta}, {"b", protocol.OpDelWithMeta},
		{"loud", protocol.OpDelVBucket}, {"c", protocol.OpSetWithMeta},
	} {
		frame := copyOf(r.key)
		if r.op == protocol.OpDelVBucket {
			frame = protocol.AppendFrame(nil, &protocol.Frame{Magic: protocol.MagicRequest, Opcode: protocol.OpDelVBucket, Key: []byte(r.key)})
		}
		cl, pc := p.queue(addr, frame, r.op, w)
		if pc == nil {
			t.Fatalf("queue: %v", cl.err)
		}
		calls = append(calls, cl)
		if r.key == "c" {
			pc.kick()
		}
	}
	if !w.waitAll() {
		t.Fatal("calls not complete after forwardTimeout")
	}
	for i, want := range []struct {
		status protocol.Status
		value  string
	}{{protocol.StatusOK, ""}, {protocol.StatusNotMyVBucket, "Not my vbucket"}, {protocol.StatusOK, ""}, {protocol.StatusOK, "answer to loud"}, {protocol.StatusOK, ""}} {
		resp, err := w.wait(calls[i])
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		r, _, err := protocol.Parse(resp, protocol.MagicResponse, ^uint32(0))
		if err != nil || r.Status() != want.status || string(r.Value) != want.value {
			t.Errorf("call %d: status 0x%02x value %q (%v), want 0x%02x %q", i, r.Status(), r.Value, err, want.status, want.value)
		}
	}
	p.close()
	var ops []protocol.Opcode
	for len(ops) < 6 {
		select {
		case op := <-received:
			ops = append(ops, op)
		case <-time.After(5 * time.Second):
			t.Fatalf("peer received only %v", ops)
		}
	}
	want := []protocol.Opcode{protocol.OpSetQWithMeta, protocol.OpSetQWithMeta, protocol.OpDelQWithMeta,
		protocol.OpDelVBucket, protocol.OpSetQWithMeta, protocol.OpNoop}
	if len(ops) != len(want) {
		t.Fatalf("peer received %v, want %v", ops, want)
	}
	for i := range want {
		if ops[i] != want[i] {
			t.Fatalf("peer received %v, want %v", ops, want)
		}
	}
}

// fakePeer listens on loopback and serves each connection as a peer node
// would be served by: it reads each request and writes what answer returns
// for it, if anything. answer may block, and then that connection reads no
// further; it is called from one goroutine per connection (a node opens
// two to each peer, see peerSlot). The listener closes when the test ends,
// and each connection once answer returns after that.
func fakePeer(t *testing.T, answer func(h protocol.Header, body []byte) []byte) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go servePeer(nc, answer)
		}
	}()
	return l.Addr().String()
}

// servePeer is one connection of fakePeer.
func servePeer(nc net.Conn, answer func(h protocol.Header, body []byte) []byte) {
	defer nc.Close()
	br := bufio.NewReader(nc)
	for {
		hdr := make([]byte, protocol.HeaderLen)
		if _, err := io.ReadFull(br, hdr); err != nil {
			return
		}
		h := protocol.ParseHeader(hdr)
		body := make([]byte, h.BodyLen)
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		if resp := answer(h, body); resp != nil {
			nc.Write(resp)
		}
	}
}

// okResponse is a bare success response to h.
func okResponse(h protocol.Header) []byte {
	return protocol.AppendHeader(nil, protocol.MagicResponse, h.Opcode, 0, 0, 0, 0, 0, h.Opaque, 0)
}

// TestWaiter: a waiter wakes for the call it waits for while others are
// pending, and waitAll returns once the last of them completes.
func TestWaiter(t *testing.T) {
	w := newWaiter()
	a, b, c := newCall(w), newCall(w), newCall(w)
	go func() {
		time.Sleep(10 * time.Millisecond)
		b.complete([]byte("b"), nil)
	}()
	if resp, err := w.wait(b); err != nil || string(resp) != "b" {
		t.Fatalf("wait(b): %q, %v", resp, err)
	}
	if a.done.Load() || c.done.Load() {
		t.Fatal("a or c done")
	}
	go func() {
		time.Sleep(10 * time.Millisecond)
		a.complete(nil, nil)
		time.Sleep(10 * time.Millisecond)
		c.complete(nil, errPeerClosed)
	}()
	if !w.waitAll() {
		t.Fatal("waitAll timed out")
	}
	if !a.done.Load() || !c.done.Load() || w.pending.Load() != 0 {
		t.Fatalf("waitAll returned with a done %v, c done %v, %d pending", a.done.Load(), c.done.Load(), w.pending.Load())
	}
	if _, err := w.wait(c); err != errPeerClosed {
		t.Fatalf("wait(c): %v, want %v", err, errPeerClosed)
	}
}

// TestPeerBacklog: a peer that reads nothing lets this node's output to it
// pile up; once more than peerBacklog is unwritten, the calls queued are
// marked behind (so async replication waits for them), and not before.
func TestPeerBacklog(t *testing.T) {
	release := make(chan struct{})
	addr := fakePeer(t, func(h protocol.Header, _ []byte) []byte {
		if h.Opcode != protocol.OpHello {
			<-release // reads nothing more
		}
		return okResponse(h)
	})
	defer close(release)
	p := newPeers(nil, slog.New(slog.DiscardHandler))
	defer p.close()
	copy64k := protocol.AppendFrame(nil, &protocol.Frame{Magic: protocol.MagicRequest, Opcode: protocol.OpSetWithMeta,
		Extras: make([]byte, 24), Key: []byte("k"), Value: make([]byte, 64<<10)})
	// Socket buffers take some megabytes first; then the writer blocks and
	// the output grows.
	deadline := time.Now().Add(10 * time.Second)
	for sent := 0; ; sent++ {
		cl := p.send(addr, copy64k, protocol.OpSetWithMeta, nil)
		if cl.done.Load() {
			t.Fatalf("call %d failed: %v", sent, cl.err)
		}
		pc, _ := p.conn(addr, streamSlot)
		pc.mu.Lock()
		unwritten := len(pc.out)
		pc.mu.Unlock()
		if cl.behind {
			// It was marked behind for what was unwritten before it.
			if unwritten <= peerBacklog {
				t.Fatalf("call %d marked behind with %d bytes unwritten", sent, unwritten)
			}
			return
		}
		if unwritten > peerBacklog+2*len(copy64k) {
			t.Fatalf("%d bytes unwritten and call %d not marked behind", unwritten, sent)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no call marked behind after %d sent", sent)
		}
		time.Sleep(time.Millisecond) // let the writer take what it can
	}
}

// TestPeerSkipsAnswer: a peer whose response skips a loud request breaks
// the protocol. The connection fails at once: the quiet copy before the
// skipped request succeeded, and every call after it gets the error
// rather than waiting out its timeout.
func TestPeerSkipsAnswer(t *testing.T) {
	addr := fakePeer(t, func(h protocol.Header, _ []byte) []byte {
		if h.Opcode == protocol.OpHello || h.Opcode == protocol.OpNoop {
			return okResponse(h)
		}
		return nil
	})
	p := newPeers(nil, slog.New(slog.DiscardHandler))
	defer p.close()
	w := newWaiter()
	setMeta := protocol.AppendFrame(nil, &protocol.Frame{Magic: protocol.MagicRequest, Opcode: protocol.OpSetWithMeta,
		Extras: make([]byte, 24), Key: []byte("k"), Value: []byte("v")})
	loud := protocol.AppendFrame(nil, &protocol.Frame{Magic: protocol.MagicRequest, Opcode: protocol.OpDelVBucket})
	var calls []*call
	for _, r := range []struct {
		frame []byte
		op    protocol.Opcode
	}{{setMeta, protocol.OpSetWithMeta}, {loud, protocol.OpDelVBucket}, {setMeta, protocol.OpSetWithMeta}} {
		cl, pc := p.queue(addr, r.frame, r.op, w)
		if pc == nil {
			t.Fatalf("queue: %v", cl.err)
		}
		calls = append(calls, cl)
	}
	pc, _ := p.conn(addr, streamSlot)
	start := time.Now()
	pc.kick()
	if !w.waitAll() || time.Since(start) > forwardTimeout/2 {
		t.Fatalf("calls complete after %v", time.Since(start))
	}
	if resp, err := w.wait(calls[0]); err != nil || respStatus(resp) != protocol.StatusOK {
		t.Errorf("the copy before the skipped request: %v", err)
	}
	for _, cl := range calls[1:] {
		if _, err := w.wait(cl); err == nil {
			t.Error("a call from the skipped request on succeeded")
		}
	}
}

// TestSetCopyMatchesStored: the copy replicate builds from a SET's request
// and meta is, byte for byte, the one read back from the store would be.
func TestSetCopyMatchesStored(t *testing.T) {
	st, err := store.New(store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := &replicator{srv: &Server{cfg: Config{Store: st}}}
	key, value := []byte("some-key"), []byte("some value")
	cas, err := st.Set(store.ModeSet, key, value, 0xdeadbeef, protocol.DataTypeJSON, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	m := store.Meta{Flags: 0xdeadbeef, DataType: protocol.DataTypeJSON, CAS: cas}
	fromReq := appendSetCopy([]byte("prefix"), key, value, m, 77)
	fromStore := r.appendCopy([]byte("prefix"), key, 77)
	if !bytes.Equal(fromReq, fromStore) {
		t.Fatalf("copy from the request\n%x\nfrom the store\n%x", fromReq, fromStore)
	}
	req, _, err := protocol.Parse(fromReq[len("prefix"):], protocol.MagicRequest, ^uint32(0))
	if err != nil || req.Opcode != protocol.OpSetWithMeta || req.VBucket != 77 || string(req.Key) != string(key) || string(req.Value) != string(value) {
		t.Fatalf("copy %+v, %v", req, err)
	}
}

// TestStreamRestartsAfterForget: a stream starts (with DEL_VBUCKET) once,
// however many writes it carries, and again once forgotten.
func TestStreamRestartsAfterForget(t *testing.T) {
	resets := make(chan uint16, 8)
	addr := fakePeer(t, func(h protocol.Header, _ []byte) []byte {
		if h.Opcode == protocol.OpDelVBucket {
			resets <- h.VBucket
		}
		return okResponse(h)
	})
	p := newPeers(nil, slog.New(slog.DiscardHandler))
	defer p.close()
	r := newReplicator(&Server{peers: p}, 8, true)
	started := func(vb uint16, name string) {
		r.vbLocks[vb].Lock()
		r.start(vb, name, addr)
		r.vbLocks[vb].Unlock()
	}
	expect := func(want int) {
		t.Helper()
		for range want {
			select {
			case <-resets:
			case <-time.After(5 * time.Second):
				t.Fatal("no DEL_VBUCKET")
			}
		}
		select {
		case vb := <-resets:
			t.Fatalf("an extra DEL_VBUCKET for vbucket %d", vb)
		case <-time.After(50 * time.Millisecond):
		}
	}
	started(3, "a")
	started(3, "a")
	started(3, "b") // another receiver of the same vbucket
	started(3, "a")
	expect(2)
	r.mu.Lock()
	r.forget(streamKey{3, "a"})
	r.mu.Unlock()
	started(3, "b")
	started(3, "a")
	started(3, "a")
	expect(1)
}

// TestCallSlab: a connection's calls come from a slab that is reused only
// once every call it made is complete; while one is pending (a timed-out
// call a peer may still answer) new calls come from elsewhere.
func TestCallSlab(t *testing.T) {
	c := &conn{}
	a, b := c.newCall(), c.newCall()
	a.complete(nil, nil)
	c.recycleCalls()
	if d := c.newCall(); d == a || d == b {
		t.Fatal("a call reused while another is pending")
	} else {
		d.complete(nil, nil)
	}
	b.complete(nil, nil)
	c.recycleCalls()
	if d := c.newCall(); d != a {
		t.Fatal("the slab is not reused once every call is complete")
	} else if d.done.Load() || d.resp != nil || c.peerWait.pending.Load() != 1 {
		t.Fatalf("a reused call is not fresh: done %v, %d pending", d.done.Load(), c.peerWait.pending.Load())
	}
	// Calls never waited for (async copies) fill slab after slab, each of
	// at most maxSlab calls, all distinct.
	seen := map[*call]bool{}
	for range 3 * maxSlab {
		cl := c.newCall()
		if seen[cl] {
			t.Fatal("a pending call handed out twice")
		}
		seen[cl] = true
		c.recycleCalls()
	}
	if len(c.slab) > maxSlab {
		t.Fatalf("slab of %d calls, more than %d", len(c.slab), maxSlab)
	}
}
