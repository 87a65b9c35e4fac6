package node

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"vbcache/protocol"
	"vbcache/store"
	"vbcache/vbucket"
)

// Rebalance, replication and failover tests: data follows the map and no
// acknowledged write is lost.

// loadKeys stores n keys "prefix-i" = "value-prefix-i" through addr with
// pipelined SETQ and returns each key's CAS, read back with GETK.
func loadKeys(t *testing.T, addr, prefix string, n int) map[string]uint64 {
	t.Helper()
	c := dial(t, addr)
	const batch = 500
	for i := 0; i < n; i += batch {
		for j := i; j < min(i+batch, n); j++ {
			k := fmt.Sprintf("%s-%d", prefix, j)
			c.sendOpaque(protocol.OpSetQ, 0, k, make([]byte, 8), "value-"+k, uint32(j))
		}
		c.sendOpaque(protocol.OpNoop, 0, "", nil, "", 0xffffffff)
		if st, resp := c.recv(t); resp.Opcode != protocol.OpNoop {
			t.Fatalf("SETQ %s-%d: status 0x%02x", prefix, resp.Opaque, st)
		}
	}
	return readKeys(t, addr, prefix, n)
}

// readKeys reads keys "prefix-0".."prefix-(n-1)" through addr with
// pipelined GETKQ and returns the CAS of each one found with its expected
// value. A key with a wrong value fails the test.
func readKeys(t *testing.T, addr, prefix string, n int) map[string]uint64 {
	t.Helper()
	c := dial(t, addr)
	got := make(map[string]uint64, n)
	const batch = 500
	for i := 0; i < n; i += batch {
		for j := i; j < min(i+batch, n); j++ {
			c.sendOpaque(protocol.OpGetKQ, 0, fmt.Sprintf("%s-%d", prefix, j), nil, "", uint32(j))
		}
		c.sendOpaque(protocol.OpNoop, 0, "", nil, "", 0xffffffff)
		for {
			st, resp := c.recv(t)
			if resp.Opcode == protocol.OpNoop {
				break
			}
			if st != protocol.StatusOK {
				t.Fatalf("GETKQ %s: status 0x%02x %s", resp.Key, st, resp.Value)
			}
			if want := "value-" + string(resp.Key); string(resp.Value) != want {
				t.Fatalf("key %s = %q, want %q", resp.Key, resp.Value, want)
			}
			got[string(resp.Key)] = resp.CAS
		}
	}
	return got
}

// writer sets keys "prefix-i", i = 0, 1, ..., one at a time through addr
// (loud SET, so each write is acknowledged or not) until stop is closed or
// limit writes were made, and records the acknowledged ones.
type writer struct {
	acked  sync.Map // key -> struct{}
	nAcked atomic.Int64
	nErr   atomic.Int64
	done   chan struct{}
}

func startWriter(t *testing.T, addr, prefix string, limit int, stop <-chan struct{}) *writer {
	w := &writer{done: make(chan struct{})}
	c := dial(t, addr)
	go func() {
		defer close(w.done)
		for i := 0; i < limit; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k := fmt.Sprintf("%s-%d", prefix, i)
			c.sendOpaque(protocol.OpSet, 0, k, make([]byte, 8), "value-"+k, uint32(i))
			st, ok := c.tryRecv()
			if !ok {
				return
			}
			if st == protocol.StatusOK {
				w.acked.Store(k, struct{}{})
				w.nAcked.Add(1)
			} else {
				w.nErr.Add(1)
			}
		}
	}()
	return w
}

// checkAcked reads every acknowledged key of w through addr.
func (w *writer) checkAcked(t *testing.T, addr, prefix string) {
	t.Helper()
	<-w.done
	n := 0
	w.acked.Range(func(any, any) bool { n++; return true })
	var maxI int
	w.acked.Range(func(k, _ any) bool {
		var i int
		fmt.Sscanf(k.(string)[len(prefix)+1:], "%d", &i)
		maxI = max(maxI, i)
		return true
	})
	got := readKeys(t, addr, prefix, maxI+1)
	lost := 0
	w.acked.Range(func(k, _ any) bool {
		if _, ok := got[k.(string)]; !ok {
			if lost < 5 {
				t.Errorf("acknowledged write %s lost", k)
			}
			lost++
		}
		return true
	})
	t.Logf("writer: %d acknowledged, %d refused; %d lost", n, w.nErr.Load(), lost)
	if n == 0 {
		t.Fatal("the writer made no acknowledged write")
	}
}

func TestRebalanceOnJoinMovesData(t *testing.T) {
	n := 100000
	if raceEnabled {
		n = 20000
	}
	nodes := startCluster(t, 2)
	waitSettled(t, nodes, convergeTimeout)
	before := loadKeys(t, nodes[0].KVAddr(), "key", n)
	if len(before) != n {
		t.Fatalf("loaded %d keys, want %d", len(before), n)
	}

	sent := func() (items, bytes uint64) {
		for _, nd := range nodes {
			p := nd.srv.Progress()
			items, bytes = items+p.BackfillItems, bytes+p.BackfillBytes
		}
		return
	}
	items0, bytes0 := sent()

	stop := make(chan struct{})
	w := startWriter(t, nodes[1].KVAddr(), "during", 1_000_000, stop)
	start := time.Now()
	nodes = append(nodes, startNode(t, "node2", 0, nodes[0].Cluster().GossipAddr()))
	m := waitSettled(t, nodes, 60*time.Second)
	took := time.Since(start)
	close(stop)

	items, bytes := sent()
	items, bytes = items-items0, bytes-bytes0
	active, _ := m.Counts()
	third := active[m.IndexOf("node2")]
	t.Logf("join to new node serving its vbuckets (settled map): %v; node2 holds %d active vbuckets", took.Round(time.Millisecond), third)
	t.Logf("rebalance moved %d items, %.1f MB: %.0f items/s, %.1f MB/s (race detector: %v)",
		items, float64(bytes)/1e6, float64(items)/took.Seconds(), float64(bytes)/1e6/took.Seconds(), raceEnabled)
	if items < uint64(n)/3 {
		t.Errorf("backfills sent %d items; the new node alone should receive about %d", items, 2*n/3)
	}
	var st struct {
		Progress struct {
			VBucketsActive int    `json:"vbuckets_active"`
			ItemsSent      uint64 `json:"items_sent"`
		} `json:"progress"`
	}
	getJSON(t, "http://"+nodes[0].HTTPAddr()+"/cluster", &st)
	if st.Progress.VBucketsActive != active[m.IndexOf(nodes[0].name)] || st.Progress.ItemsSent == 0 {
		t.Errorf("/cluster progress %+v: want node0's %d active vbuckets and items sent", st.Progress, active[m.IndexOf(nodes[0].name)])
	}
	if third < 300 || third > 380 {
		t.Errorf("node2 holds %d active vbuckets, want about 1024/3", third)
	}
	for _, nd := range nodes {
		after := readKeys(t, nd.KVAddr(), "key", n)
		if len(after) != n {
			t.Fatalf("through %s: %d of %d keys", nd.name, len(after), n)
		}
		for k, cas := range before {
			if after[k] != cas {
				t.Fatalf("through %s: key %s has CAS %d, had %d", nd.name, k, after[k], cas)
			}
		}
	}
	w.checkAcked(t, nodes[2].KVAddr(), "during")
	// Moved data is dropped by the old owners: each node holds its active
	// vbuckets and its replicas, no more.
	total := 0
	for _, nd := range nodes {
		total += int(nd.Store().Stats().CurrItems)
	}
	if want := 2 * (n + int(w.nAcked.Load())); total > want+want/10 {
		t.Errorf("nodes hold %d items in all; with one replica want about %d", total, want)
	}
}

func TestGracefulLeaveKeepsWrites(t *testing.T) {
	nodes := startCluster(t, 3)
	waitSettled(t, nodes, convergeTimeout)
	loadKeys(t, nodes[0].KVAddr(), "key", 5000)
	stop := make(chan struct{})
	w := startWriter(t, nodes[0].KVAddr(), "during", 1_000_000, stop)
	time.Sleep(200 * time.Millisecond) // let the writer get going

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := nodes[2].Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	left := nodes[2].KVAddr()
	nodes = nodes[:2]
	waitSettled(t, nodes, convergeTimeout)
	// The others forget their connections to it: no lag series for a
	// node that is gone.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		still := ""
		for _, nd := range nodes {
			for _, l := range nd.srv.Progress().Peers {
				if l.Peer == left {
					still = nd.name
				}
			}
		}
		if still == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still has a connection to %s, which left", still, left)
		}
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	if got := readKeys(t, nodes[1].KVAddr(), "key", 5000); len(got) != 5000 {
		t.Fatalf("after the leave %d of 5000 keys", len(got))
	}
	w.checkAcked(t, nodes[1].KVAddr(), "during")
	if e := w.nErr.Load(); e != 0 {
		t.Errorf("a legacy client saw %d errors during a graceful leave", e)
	}
}

func TestFailoverKeepsSyncWrites(t *testing.T) {
	nodes := startCluster(t, 3)
	m := waitSettled(t, nodes, convergeTimeout)
	loadKeys(t, nodes[0].KVAddr(), "item", 5000)
	stop := make(chan struct{})
	w := startWriter(t, nodes[0].KVAddr(), "during", 1_000_000, stop)
	time.Sleep(200 * time.Millisecond)

	victim := nodes[2]
	key, _ := keyOwnedBy(m, func(i int) bool { return i == m.IndexOf(victim.name) })
	killed := time.Now()
	victim.Close()
	nodes = nodes[:2]

	// The cluster serves the victim's vbuckets again.
	c := dial(t, nodes[0].KVAddr())
	for {
		c.send(protocol.OpSet, 0, key, make([]byte, 8), "x")
		if st, _ := c.recv(t); st == protocol.StatusOK {
			break
		}
		if time.Since(killed) > 10*time.Second {
			t.Fatal("the killed node's vbuckets were not served again within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("serving the killed node's vbuckets again %v after the kill", time.Since(killed).Round(time.Millisecond))
	waitSettled(t, nodes, 30*time.Second)
	close(stop)
	if got := readKeys(t, nodes[1].KVAddr(), "item", 5000); len(got) != 5000 {
		t.Fatalf("after failover %d of 5000 keys", len(got))
	}
	w.checkAcked(t, nodes[1].KVAddr(), "during")
}

// tryRecv is recv for a background goroutine: it reports failure instead
// of failing the test.
func (c *rawConn) tryRecv() (protocol.Status, bool) {
	hdr := make([]byte, protocol.HeaderLen)
	if _, err := readFull(c, hdr); err != nil {
		return 0, false
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[8:12]))
	if _, err := readFull(c, body); err != nil {
		return 0, false
	}
	return protocol.Status(binary.BigEndian.Uint16(hdr[6:8])), true
}

// TestRestartedNodeRejoins kills a node, restarts it under the same name
// (on new ports, empty) and checks that it gets vbuckets, and their data,
// through a rebalance.
func TestRestartedNodeRejoins(t *testing.T) {
	nodes := startCluster(t, 3)
	waitConverged(t, nodes)
	loadKeys(t, nodes[0].KVAddr(), "key", 5000)
	nodes[2].Close()
	waitConverged(t, nodes[:2])

	nodes[2] = startNode(t, "node2", 0, nodes[0].Cluster().GossipAddr())
	m := waitSettled(t, nodes, 30*time.Second)
	active, replica := m.Counts()
	i := m.IndexOf("node2")
	if active[i] < 300 || replica[i] < 300 {
		t.Fatalf("restarted node holds %d active and %d replica vbuckets", active[i], replica[i])
	}
	if items := nodes[2].Store().Stats().CurrItems; items < 2500 {
		t.Errorf("restarted node holds %d items; about 2/3 of 5000 should have moved to it", items)
	}
	if got := readKeys(t, nodes[2].KVAddr(), "key", 5000); len(got) != 5000 {
		t.Fatalf("%d of 5000 keys after the restart", len(got))
	}
}

// TestTouchReachesReplica: TOUCH keeps the CAS but changes the expiration;
// the replica's copy must follow, or a failover would resurrect the old
// expiration.
func TestTouchReachesReplica(t *testing.T) {
	nodes := startCluster(t, 2)
	m := waitConverged(t, nodes)
	key, vb := keyOwnedBy(m, func(i int) bool { return i == m.IndexOf("node0") })
	replica := nodes[1]
	if m.VBuckets[vb][1] != m.IndexOf(replica.name) {
		t.Fatalf("vbucket %d row %v: want node1 as its replica", vb, m.VBuckets[vb])
	}
	c := dial(t, nodes[0].KVAddr())
	c.send(protocol.OpSet, 0, key, make([]byte, 8), "v")
	if st, _ := c.recv(t); st != protocol.StatusOK {
		t.Fatalf("SET: 0x%02x", st)
	}
	exp := make([]byte, 4)
	binary.BigEndian.PutUint32(exp, 1000)
	c.send(protocol.OpTouch, 0, key, exp, "")
	if st, _ := c.recv(t); st != protocol.StatusOK {
		t.Fatalf("TOUCH: 0x%02x", st)
	}
	_, primary, _ := nodes[0].Store().GetWithMeta([]byte(key), nil)
	_, copied, ok := replica.Store().GetWithMeta([]byte(key), nil)
	if !ok || copied.Exp != primary.Exp || copied.Exp == 0 || copied.CAS != primary.CAS {
		t.Fatalf("replica holds %+v (found %v); active holds %+v", copied, ok, primary)
	}
}

// TestAsyncReplicationReachesReplica checks that with async replication a
// write is answered at once and its copy still reaches the replica, with
// nothing else sent after it to push it out.
func TestAsyncReplicationReachesReplica(t *testing.T) {
	nodes := []*testNode{startNodeWith(t, "node0", Config{AsyncReplication: true})}
	nodes = append(nodes, startNodeWith(t, "node1", Config{AsyncReplication: true, Seeds: []string{nodes[0].Cluster().GossipAddr()}}))
	m := waitConverged(t, nodes)
	key, vb := keyOwnedBy(m, func(i int) bool { return i == m.IndexOf("node0") })
	if m.VBuckets[vb][1] != m.IndexOf("node1") {
		t.Fatalf("vbucket %d row %v: want node1 as its replica", vb, m.VBuckets[vb])
	}
	c := dial(t, nodes[0].KVAddr())
	c.send(protocol.OpSet, 0, key, make([]byte, 8), "async")
	if st, _ := c.recv(t); st != protocol.StatusOK {
		t.Fatalf("SET: 0x%02x", st)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, _, ok := nodes[1].Store().GetWithMeta([]byte(key), nil)
		if ok && string(v) == "async" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica holds %q (found %v) 5s after the write", v, ok)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStreamStartEmptiesInOrder sends a replica what a stream start sends,
// as a peer would, in one write: copies and DEL_VBUCKETs of two vbuckets
// interleaved. The receiver empties vbuckets lazily, in one pass over the
// store per batch, and must still apply them in order: a copy sent before
// its vbucket's DEL_VBUCKET is gone, one sent after it stays.
func TestStreamStartEmptiesInOrder(t *testing.T) {
	nodes := startCluster(t, 2)
	m := waitConverged(t, nodes)
	recv := nodes[1]
	self := m.IndexOf(recv.name)
	var vbs []uint16 // two vbuckets recv holds as a replica
	for vb := 0; len(vbs) < 2; vb++ {
		if m.Active(uint16(vb)) != self {
			vbs = append(vbs, uint16(vb))
		}
	}
	keyIn := func(vb uint16, prefix string) string {
		for i := 0; ; i++ {
			k := fmt.Sprintf("%s-%d", prefix, i)
			if vbucket.VBucket([]byte(k), m.NumVBuckets()) == vb {
				return k
			}
		}
	}
	x, y := vbs[0], vbs[1]
	meta := func(cas uint64) []byte {
		e := make([]byte, 24)
		binary.BigEndian.PutUint64(e[16:], cas)
		return e
	}
	frame := func(op protocol.Opcode, vb uint16, key string, extras []byte) []byte {
		f := &protocol.Frame{Magic: protocol.MagicRequest, Opcode: op, VBucket: vb, Extras: extras, Key: []byte(key)}
		if op == protocol.OpSetWithMeta {
			f.Value = []byte("v")
		}
		return protocol.AppendFrame(nil, f)
	}
	c := dial(t, recv.KVAddr())
	c.send(protocol.OpHello, 0, "vbcache-peer test", nil, "") // the agent peers send
	if st, _ := c.recv(t); st != protocol.StatusOK {
		t.Fatalf("HELLO: %v", st)
	}
	earlyY := keyIn(y, "early")
	c.nc.Write(frame(protocol.OpSetWithMeta, y, earlyY, meta(1<<40)))
	if st, _ := c.recv(t); st != protocol.StatusOK {
		t.Fatalf("SET_WITH_META before the batch: %v", st)
	}

	beforeX, afterX, afterY := keyIn(x, "before"), keyIn(x, "after"), keyIn(y, "after")
	var batch []byte
	batch = append(batch, frame(protocol.OpSetWithMeta, x, beforeX, meta(1<<40+1))...)
	batch = append(batch, frame(protocol.OpDelVBucket, x, "", nil)...)
	batch = append(batch, frame(protocol.OpDelVBucket, y, "", nil)...)
	batch = append(batch, frame(protocol.OpSetWithMeta, x, afterX, meta(1<<40+2))...)
	batch = append(batch, frame(protocol.OpSetWithMeta, y, afterY, meta(1<<40+3))...)
	batch = append(batch, frame(protocol.OpDelVBucket, x, "", nil)...)
	batch = append(batch, frame(protocol.OpNoop, 0, "", nil)...)
	c.nc.Write(batch)
	for i := range 7 {
		if st, _ := c.recv(t); st != protocol.StatusOK {
			t.Fatalf("response %d: %v", i, st)
		}
	}
	for key, want := range map[string]bool{earlyY: false, beforeX: false, afterX: false, afterY: true} {
		if _, _, ok := recv.Store().Get([]byte(key), nil); ok != want {
			t.Errorf("%s held: %v, want %v", key, ok, want)
		}
	}
}

// TestQuietCopiesRefusedAlone: a replica applies SETQ_WITH_META and
// DELQ_WITH_META, the quiet copies peers send, without a word, and
// answers only those it refuses, each with its own opaque; the NOOP after
// them is answered last.
func TestQuietCopiesRefusedAlone(t *testing.T) {
	nodes := startCluster(t, 2)
	m := waitConverged(t, nodes)
	recv := nodes[1]
	self := m.IndexOf(recv.name)
	replicaVB, activeVB := -1, -1
	for vb := 0; replicaVB < 0 || activeVB < 0; vb++ {
		if m.Active(uint16(vb)) == self {
			activeVB = vb
		} else {
			replicaVB = vb
		}
	}
	keyIn := func(vb int, prefix string) string {
		for i := 0; ; i++ {
			k := fmt.Sprintf("%s-%d", prefix, i)
			if int(vbucket.VBucket([]byte(k), m.NumVBuckets())) == vb {
				return k
			}
		}
	}
	meta := func(cas uint64) []byte {
		e := make([]byte, 24)
		binary.BigEndian.PutUint64(e[16:], cas)
		return e
	}
	c := dial(t, recv.KVAddr())
	c.send(protocol.OpHello, 0, "vbcache-peer test", nil, "") // the agent peers send
	if st, _ := c.recv(t); st != protocol.StatusOK {
		t.Fatalf("HELLO: %v", st)
	}
	kept, deleted, active := keyIn(replicaVB, "kept"), keyIn(replicaVB, "deleted"), keyIn(activeVB, "active")
	var batch []byte
	add := func(op protocol.Opcode, vb int, key string, extras []byte, value string, opaque uint32) {
		batch = protocol.AppendFrame(batch, &protocol.Frame{Magic: protocol.MagicRequest, Opcode: op,
			VBucket: uint16(vb), Opaque: opaque, Extras: extras, Key: []byte(key), Value: []byte(value)})
	}
	add(protocol.OpSetQWithMeta, replicaVB, kept, meta(1<<40), "v", 1)
	add(protocol.OpSetQWithMeta, replicaVB, deleted, meta(1<<40+1), "v", 2)
	add(protocol.OpSetQWithMeta, replicaVB, "bad-extras", meta(1)[:8], "v", 3)
	add(protocol.OpSetQWithMeta, activeVB, active, meta(1<<40+2), "v", 4)
	add(protocol.OpDelQWithMeta, replicaVB, deleted, meta(1<<40+3), "", 5)
	add(protocol.OpNoop, 0, "", nil, "", 6)
	c.nc.Write(batch)
	for _, want := range []struct {
		opaque uint32
		status protocol.Status
	}{{3, protocol.StatusInvalidArgs}, {4, protocol.StatusNotMyVBucket}, {6, protocol.StatusOK}} {
		st, resp := c.recv(t)
		if resp.Opaque != want.opaque || st != want.status {
			t.Fatalf("response: opaque %d status 0x%02x, want opaque %d status 0x%02x", resp.Opaque, st, want.opaque, want.status)
		}
	}
	for key, want := range map[string]bool{kept: true, deleted: false, active: false} {
		if _, _, ok := recv.Store().Get([]byte(key), nil); ok != want {
			t.Errorf("%s held: %v, want %v", key, ok, want)
		}
	}
}

// TestBackfillWindow: a backfill queues at most a window of copies for
// its peers before it waits for them to catch up, so a rebalance does not
// hold a second copy of everything it moves in the sender's memory; and
// everything still arrives.
func TestBackfillWindow(t *testing.T) {
	n, valueLen := 32000, 4096
	big := Config{MemoryLimit: 512 << 20} // nothing evicted
	nodes := []*testNode{startNodeWith(t, "node0", big)}
	big.Seeds = []string{nodes[0].Cluster().GossipAddr()}
	nodes = append(nodes, startNodeWith(t, "node1", big))
	m := waitSettled(t, nodes, convergeTimeout)
	sender := nodes[0]
	self := m.IndexOf(sender.name)
	// Items only the sender holds: written to its store directly, in the
	// vbuckets it holds active, so the join backfills them from it alone.
	value := bytes.Repeat([]byte("v"), valueLen)
	var stored []string
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("big-%d", i)
		if m.Active(vbucket.VBucket([]byte(k), m.NumVBuckets())) != self {
			continue
		}
		if _, err := sender.Store().Set(store.ModeSet, []byte(k), value, 0, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
		stored = append(stored, k)
	}

	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, l := range sender.srv.Progress().Peers {
				if int64(l.Copies) > peak.Load() {
					peak.Store(int64(l.Copies))
				}
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	nodes = append(nodes, startNodeWith(t, "node2", big))
	m2 := waitSettled(t, nodes, 60*time.Second)
	close(stop)
	<-sampled

	// The window in copies of this size; one vbucket's items, which go
	// under its lock in one piece before the window is looked at; and the
	// DEL_VBUCKETs that start the streams, all sent first.
	frame := 24 + 24 + len("big-00000") + valueLen
	perVBucket := 4 * n / m.NumVBuckets()
	bound := (4<<20)/frame + 1 + perVBucket + m.NumVBuckets()
	t.Logf("%d items of %d bytes on the sender; peak copies queued to one peer %d, bound %d", len(stored), valueLen, peak.Load(), bound)
	if peak.Load() == 0 {
		t.Fatal("sampled no backfill at all")
	}
	if peak.Load() > int64(bound) {
		t.Errorf("a peer had %d copies queued, more than the window allows (%d)", peak.Load(), bound)
	}
	// Every item reached the servers the join added to its vbucket's row
	// (the others had their streams before the items were written).
	byName := map[string]*testNode{}
	for _, nd := range nodes {
		byName[nd.name] = nd
	}
	checked := 0
	for _, k := range stored {
		vb := vbucket.VBucket([]byte(k), m2.NumVBuckets())
		for _, i := range m2.VBuckets[vb] {
			name := m2.Servers[i].Name
			if slices.ContainsFunc(m.VBuckets[vb], func(j int) bool { return j >= 0 && m.Servers[j].Name == name }) {
				continue
			}
			checked++
			if v, _, ok := byName[name].Store().Get([]byte(k), nil); !ok || !bytes.Equal(v, value) {
				t.Fatalf("%s missing on %s after the rebalance", k, name)
			}
		}
	}
	if checked < len(stored)/2 {
		t.Fatalf("only %d copies to check for %d items: the join moved too little to test", checked, len(stored))
	}
}

// TestReplicaPartners: with ReplicaPartners 1 each node's vbuckets are
// replicated to one node only, the next in name order. When a node fails,
// no write acknowledged before is lost, and the survivors' map keeps the
// bound.
func TestReplicaPartners(t *testing.T) {
	names := []string{"node0", "node1", "node2", "node3"}
	nodes := []*testNode{startNodeWith(t, names[0], Config{ReplicaPartners: 1})}
	for _, name := range names[1:] {
		nodes = append(nodes, startNodeWith(t, name, Config{ReplicaPartners: 1, Seeds: []string{nodes[0].Cluster().GossipAddr()}}))
	}
	m := waitSettled(t, nodes, 30*time.Second)
	checkPartners := func(m *vbucket.Map) {
		t.Helper()
		for vb, row := range m.VBuckets {
			next := (row[0] + 1) % len(m.Servers) // Servers are sorted by name
			if row[1] != next {
				t.Fatalf("rev %d vbucket %d: active %s, replica %v; want the replica on %s",
					m.Rev, vb, m.Servers[row[0]].Name, row[1], m.Servers[next].Name)
			}
		}
	}
	checkPartners(m)
	loadKeys(t, nodes[0].KVAddr(), "item", 5000)

	victim := nodes[1]
	victim.Close()
	nodes = slices.Delete(nodes, 1, 2)
	// The failover map leaves the victim's replicas missing (-1); the
	// rebalance after it rebuilds them.
	deadline := time.Now().Add(60 * time.Second)
	for m = waitSettled(t, nodes, 60*time.Second); slices.ContainsFunc(m.VBuckets, func(row []int) bool { return row[1] < 0 }); {
		if time.Now().After(deadline) {
			t.Fatalf("rev %d still lacks replicas 60s after the failover", m.Rev)
		}
		time.Sleep(50 * time.Millisecond)
		m = waitSettled(t, nodes, 60*time.Second)
	}
	checkPartners(m)
	if got := readKeys(t, nodes[0].KVAddr(), "item", 5000); len(got) != 5000 {
		t.Fatalf("after failover and rebalance %d of 5000 keys", len(got))
	}
	if !strings.Contains(nodes[0].log.String()+nodes[1].log.String()+nodes[2].log.String(), "replica_partners=1") {
		t.Error("no node logged replica_partners=1 when gossip started")
	}
}
