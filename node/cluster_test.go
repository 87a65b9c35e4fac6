package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"vbcache/protocol"
	"vbcache/vbucket"
)

// Multi-node tests: full nodes in one process, every listener on
// 127.0.0.1 port 0, real memberlist gossip between them.

const convergeTimeout = 15 * time.Second

// logBuffer collects a node's log for assertions and for failure output.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type testNode struct {
	*Node
	name string
	log  *logBuffer
}

// startNode starts a cluster node joining seeds. It is closed at the end of
// the test unless the test stops it first.
func startNode(t *testing.T, name string, vbuckets int, seeds ...string) *testNode {
	t.Helper()
	return startNodeWith(t, name, Config{VBuckets: vbuckets, Seeds: seeds})
}

// startNodeWith starts a node on 127.0.0.1 with cfg's settings, one
// replica unless cfg says otherwise and a debug log kept for failures.
func startNodeWith(t *testing.T, name string, cfg Config) *testNode {
	t.Helper()
	lb := &logBuffer{}
	cfg.Listen, cfg.Gossip, cfg.HTTP, cfg.Name = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", name
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	cfg.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	n, err := New(cfg)
	if err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	tn := &testNode{Node: n, name: name, log: lb}
	t.Cleanup(func() {
		n.Close()
		if t.Failed() {
			t.Logf("log of %s:\n%s", name, lastLines(lb.String(), 40))
		}
	})
	return tn
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// startCluster starts n nodes, each joining the first, and waits until all
// hold the same map over all of them.
func startCluster(t *testing.T, n int) []*testNode {
	t.Helper()
	nodes := []*testNode{startNode(t, "node0", 0)}
	for i := 1; i < n; i++ {
		nodes = append(nodes, startNode(t, fmt.Sprintf("node%d", i), 0, nodes[0].Cluster().GossipAddr()))
	}
	waitConverged(t, nodes)
	return nodes
}

// waitConverged waits until every node holds the same rev of a map whose
// servers are exactly these nodes, with no rebalance in progress, and
// returns that map.
func waitConverged(t *testing.T, nodes []*testNode) *vbucket.Map {
	t.Helper()
	return waitSettled(t, nodes, convergeTimeout)
}

func waitSettled(t *testing.T, nodes []*testNode, timeout time.Duration) *vbucket.Map {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m, why := converged(nodes)
		if why == "" {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("no convergence within %v: %s", timeout, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func converged(nodes []*testNode) (*vbucket.Map, string) {
	first := nodes[0].Cluster().Map()
	if first == nil {
		return nil, nodes[0].name + " has no map"
	}
	for _, n := range nodes {
		m := n.Cluster().Map()
		if m == nil || m.Rev != first.Rev {
			return nil, fmt.Sprintf("%s has rev %v, %s has %d", n.name, revOf(m), nodes[0].name, first.Rev)
		}
	}
	if len(first.Servers) != len(nodes) {
		return nil, fmt.Sprintf("map rev %d has %d servers, want %d", first.Rev, len(first.Servers), len(nodes))
	}
	for _, n := range nodes {
		if first.IndexOf(n.name) < 0 {
			return nil, fmt.Sprintf("map rev %d lacks %s", first.Rev, n.name)
		}
	}
	if len(first.Forward) > 0 {
		return nil, fmt.Sprintf("map rev %d: rebalance in progress", first.Rev)
	}
	return first, ""
}

func revOf(m *vbucket.Map) any {
	if m == nil {
		return "none"
	}
	return m.Rev
}

// checkMap checks that every vbucket has exactly one active owner among the
// servers and that each server holds some.
func checkMap(t *testing.T, m *vbucket.Map, vbuckets int) {
	t.Helper()
	if err := m.Validate(); err != nil {
		t.Fatalf("map rev %d invalid: %v", m.Rev, err)
	}
	if m.NumVBuckets() != vbuckets {
		t.Fatalf("map has %d vbuckets, want %d", m.NumVBuckets(), vbuckets)
	}
	active, _ := m.Counts()
	total := 0
	for i, a := range active {
		if a == 0 {
			t.Errorf("server %s holds no active vbucket", m.Servers[i].Name)
		}
		total += a
	}
	if total != vbuckets {
		t.Fatalf("%d active vbuckets across servers, want %d", total, vbuckets)
	}
	for vb := range vbuckets {
		if m.Active(uint16(vb)) < 0 {
			t.Fatalf("vbucket %d has no active owner", vb)
		}
	}
}

func TestClusterMembershipChanges(t *testing.T) {
	nodes := startCluster(t, 3)
	m := waitConverged(t, nodes)
	checkMap(t, m, vbucket.DefaultVBuckets)
	t.Logf("3 nodes: rev %d", m.Rev)

	outer := t // nodes started in subtests live until the whole test ends
	t.Run("join", func(t *testing.T) {
		nodes = append(nodes, startNode(outer, "node3", 0, nodes[1].Cluster().GossipAddr()))
		m2 := waitConverged(t, nodes)
		checkMap(t, m2, vbucket.DefaultVBuckets)
		if m2.Rev <= m.Rev {
			t.Fatalf("rev went from %d to %d", m.Rev, m2.Rev)
		}
		m = m2
	})
	t.Run("leave", func(t *testing.T) {
		leaving := nodes[3]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := leaving.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		nodes = nodes[:3]
		m2 := waitConverged(t, nodes)
		for _, mb := range nodes[0].Cluster().Status().Members {
			if mb.Name == leaving.name && mb.State != "left" {
				t.Errorf("a node that left gracefully is shown %q", mb.State)
			}
		}
		checkMap(t, m2, vbucket.DefaultVBuckets)
		if m2.Rev <= m.Rev {
			t.Fatalf("rev went from %d to %d", m.Rev, m2.Rev)
		}
		m = m2
	})
	t.Run("failure", func(t *testing.T) {
		// node0 coordinates (it is the oldest); kill another, then the
		// coordinator itself.
		for _, victim := range []int{2, 0} {
			nodes[victim].Close()
			nodes = append(nodes[:victim:victim], nodes[victim+1:]...)
			m2 := waitConverged(t, nodes)
			checkMap(t, m2, vbucket.DefaultVBuckets)
			if m2.Rev <= m.Rev {
				t.Fatalf("rev went from %d to %d", m.Rev, m2.Rev)
			}
			m = m2
		}
	})
}

func TestIncompatibleVBucketsRefused(t *testing.T) {
	nodes := startCluster(t, 2)
	before := waitConverged(t, nodes)
	odd := startNode(t, "odd", 512, nodes[0].Cluster().GossipAddr())
	deadline := time.Now().Add(convergeTimeout)
	for !strings.Contains(odd.log.String(), "refusing to merge") || !strings.Contains(nodes[0].log.String(), "refusing to merge") {
		if time.Now().After(deadline) {
			t.Fatal("no 'refusing to merge' log line on both sides")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(odd.log.String(), "-vbuckets 1024, this node 512") {
		t.Errorf("the refused node does not say why:\n%s", lastLines(odd.log.String(), 10))
	}
	// The cluster is undisturbed: same members, same rev, still serving.
	after := waitConverged(t, nodes)
	if after.Rev != before.Rev {
		t.Errorf("rev moved from %d to %d", before.Rev, after.Rev)
	}
	c := dial(t, nodes[0].KVAddr())
	c.send(protocol.OpSet, 0, "k", make([]byte, 8), "v")
	if st, _ := c.recv(t); st != protocol.StatusOK {
		t.Fatalf("SET after refusal: status 0x%02x", st)
	}
}

func TestNotMyVBucket(t *testing.T) {
	nodes := startCluster(t, 3)
	m := waitConverged(t, nodes)
	a := nodes[0]
	self := m.IndexOf(a.name)
	key, vb := keyOwnedBy(m, func(i int) bool { return i != self })

	c := dial(t, a.KVAddr())
	c.send(protocol.OpHello, 0, "test-client", nil, "\x00\x07\x00\x08\x00\x12")
	st, resp := c.recv(t)
	if st != protocol.StatusOK || !bytes.Equal(resp.Value, []byte{0, 7, 0, 8}) {
		t.Fatalf("HELLO: status 0x%02x, features % x; want XERROR and SELECT_BUCKET only", st, resp.Value)
	}
	c.send(protocol.OpGet, vb, key, nil, "")
	st, resp = c.recv(t)
	if st != protocol.StatusNotMyVBucket {
		t.Fatalf("GET of a vbucket another node owns: status 0x%02x, want 0x07", st)
	}
	if resp.DataType != protocol.DataTypeJSON {
		t.Errorf("NOT_MY_VBUCKET data type %d, want JSON", resp.DataType)
	}
	var config struct {
		Rev              int64 `json:"rev"`
		VBucketServerMap struct {
			ServerList []string `json:"serverList"`
			VBucketMap [][]int  `json:"vBucketMap"`
		} `json:"vBucketServerMap"`
	}
	if err := json.Unmarshal(resp.Value, &config); err != nil {
		t.Fatalf("NOT_MY_VBUCKET body is not a config: %v\n%s", err, resp.Value)
	}
	owner := config.VBucketServerMap.VBucketMap[vb][0]
	if config.Rev != m.Rev || config.VBucketServerMap.ServerList[owner] != m.Servers[m.Active(vb)].KV {
		t.Fatalf("config rev %d routes vb %d to %s; map rev %d says %s", config.Rev, vb,
			config.VBucketServerMap.ServerList[owner], m.Rev, m.Servers[m.Active(vb)].KV)
	}
	// The owner serves it.
	o := dial(t, config.VBucketServerMap.ServerList[owner])
	o.send(protocol.OpHello, 0, "test-client", nil, "")
	o.recv(t)
	o.send(protocol.OpSet, vb, key, make([]byte, 8), "value")
	if st, _ := o.recv(t); st != protocol.StatusOK {
		t.Fatalf("SET on the owner: status 0x%02x", st)
	}

	t.Run("peer requests are never forwarded", func(t *testing.T) {
		p := dial(t, a.KVAddr())
		p.send(protocol.OpHello, 0, "vbcache-peer", nil, "")
		p.recv(t)
		p.send(protocol.OpGet, vb, key, nil, "")
		if st, _ := p.recv(t); st != protocol.StatusNotMyVBucket {
			t.Fatalf("status 0x%02x, want 0x07", st)
		}
	})
	t.Run("GET_CLUSTER_CONFIG", func(t *testing.T) {
		c.send(protocol.OpGetClusterConfig, 0, "", nil, "")
		st, resp := c.recv(t)
		if st != protocol.StatusOK || !json.Valid(resp.Value) {
			t.Fatalf("status 0x%02x, body %q", st, resp.Value)
		}
	})
}

// keyOwnedBy returns a key whose vbucket's active owner satisfies want.
func keyOwnedBy(m *vbucket.Map, want func(int) bool) (string, uint16) {
	for i := 0; ; i++ {
		k := fmt.Sprintf("key-%d", i)
		vb := vbucket.VBucket([]byte(k), m.NumVBuckets())
		if want(m.Active(vb)) {
			return k, vb
		}
	}
}

// TestLegacyPipelineAcrossOwners is pylibmc's multi-get: SETQ... NOOP, then
// GETKQ... NOOP, from a client that knows nothing of vbuckets, on one node,
// with the keys spread over every node.
func TestLegacyPipelineAcrossOwners(t *testing.T) {
	nodes := startCluster(t, 3)
	m := waitConverged(t, nodes)
	const n = 300
	c := dial(t, nodes[1].KVAddr())
	owners := map[int]int{}
	for i := range n {
		k := fmt.Sprintf("multi-%d", i)
		owners[m.Active(vbucket.VBucket([]byte(k), m.NumVBuckets()))]++
		c.sendOpaque(protocol.OpSetQ, 0, k, make([]byte, 8), "value-"+k, uint32(i))
	}
	if len(owners) != 3 {
		t.Fatalf("keys fall on %d nodes, want 3", len(owners))
	}
	c.sendOpaque(protocol.OpNoop, 0, "", nil, "", 0xffff)
	if st, resp := c.recv(t); st != protocol.StatusOK || resp.Opcode != protocol.OpNoop {
		t.Fatalf("after SETQs: %s status 0x%02x, want only the NOOP", resp.Opcode, st)
	}
	// Every other key is missing: GETKQ misses are silent.
	for i := range 2 * n {
		k := fmt.Sprintf("multi-%d", i/2)
		if i%2 == 1 {
			k = fmt.Sprintf("missing-%d", i/2)
		}
		c.sendOpaque(protocol.OpGetKQ, 0, k, nil, "", uint32(i))
	}
	c.sendOpaque(protocol.OpNoop, 0, "", nil, "", 0xffff)
	for i := 0; i < 2*n; i += 2 {
		st, resp := c.recv(t)
		want := fmt.Sprintf("multi-%d", i/2)
		if st != protocol.StatusOK || resp.Opcode != protocol.OpGetKQ || string(resp.Key) != want ||
			string(resp.Value) != "value-"+want || resp.Opaque != uint32(i) {
			t.Fatalf("response %d: %s status 0x%02x key %q value %q opaque %d; want GETKQ %q", i/2,
				resp.Opcode, st, resp.Key, resp.Value, resp.Opaque, want)
		}
	}
	if st, resp := c.recv(t); st != protocol.StatusOK || resp.Opcode != protocol.OpNoop || resp.Opaque != 0xffff {
		t.Fatalf("want the closing NOOP, got %s status 0x%02x", resp.Opcode, st)
	}
	// The items are on their owners and replicas only, not on the node
	// the client used.
	for i := range n {
		k := []byte(fmt.Sprintf("multi-%d", i))
		row := m.VBuckets[vbucket.VBucket(k, m.NumVBuckets())]
		for _, nd := range nodes {
			_, _, ok := nd.Store().Get(k, nil)
			if want := slices.Contains(row, m.IndexOf(nd.name)); ok != want {
				t.Fatalf("key %s on %s: %v; its vbucket is on %v", k, nd.name, ok, row)
			}
		}
	}

	t.Run("FLUSH reaches every node", func(t *testing.T) {
		c.send(protocol.OpFlush, 0, "", nil, "")
		if st, _ := c.recv(t); st != protocol.StatusOK {
			t.Fatalf("FLUSH: status 0x%02x", st)
		}
		for _, nd := range nodes {
			if items := nd.Store().Stats().CurrItems; items != 0 {
				t.Errorf("%s holds %d items after FLUSH", nd.name, items)
			}
		}
	})
}

// TestLegacyClientsOnEveryNode: legacy clients on every node at once, each
// pipelining sync-replicated writes spread over every owner. Each node
// forwards writes to the others and answers theirs, which wait there for
// their copies: those must never queue behind forwarded writes, or the
// waits form a cycle across the nodes and every write times out.
func TestLegacyClientsOnEveryNode(t *testing.T) {
	nodes := startCluster(t, 3)
	waitConverged(t, nodes)
	const conns, batch, rounds = 4, 64, 5
	var wg sync.WaitGroup
	start := time.Now()
	for ni, nd := range nodes {
		for ci := range conns {
			c := dial(t, nd.KVAddr())
			wg.Go(func() {
				for r := range rounds {
					for i := range batch {
						k := fmt.Sprintf("every-%d-%d-%d", ni, ci, r*batch+i)
						c.sendOpaque(protocol.OpSet, 0, k, make([]byte, 8), "v", uint32(i))
					}
					for i := range batch {
						if st, resp := c.recv(t); st != protocol.StatusOK || resp.Opaque != uint32(i) {
							t.Errorf("node%d conn %d round %d: SET %d: status 0x%02x opaque %d", ni, ci, r, i, st, resp.Opaque)
							return
						}
					}
				}
			})
		}
	}
	wg.Wait()
	// A cycle would hold every write until the peers' 5 s timeout.
	if took := time.Since(start); took > 4*time.Second {
		t.Fatalf("%d writes took %v", len(nodes)*conns*rounds*batch, took)
	}
}

func TestHTTPEndpoints(t *testing.T) {
	nodes := startCluster(t, 3)
	m := waitConverged(t, nodes)
	var st struct {
		Rev     int64 `json:"rev"`
		Members []struct {
			Name           string `json:"name"`
			State          string `json:"state"`
			ActiveVBuckets int    `json:"active_vbuckets"`
		} `json:"members"`
		Map *vbucket.Map `json:"map"`
	}
	getJSON(t, "http://"+nodes[2].HTTPAddr()+"/cluster", &st)
	if st.Rev != m.Rev || len(st.Members) != 3 || st.Map == nil || st.Map.Rev != m.Rev {
		t.Fatalf("/cluster: rev %d, %d members; want rev %d, 3 members", st.Rev, len(st.Members), m.Rev)
	}
	total := 0
	for _, mb := range st.Members {
		if mb.State != "alive" {
			t.Errorf("member %s is %s", mb.Name, mb.State)
		}
		total += mb.ActiveVBuckets
	}
	if total != vbucket.DefaultVBuckets {
		t.Errorf("members hold %d active vbuckets in all", total)
	}
	var bucket struct {
		Name             string `json:"name"`
		NodeLocator      string `json:"nodeLocator"`
		VBucketServerMap struct {
			ServerList []string `json:"serverList"`
		} `json:"vBucketServerMap"`
	}
	getJSON(t, "http://"+nodes[0].HTTPAddr()+"/pools/default/buckets/default", &bucket)
	if bucket.NodeLocator != "vbucket" || len(bucket.VBucketServerMap.ServerList) != 3 {
		t.Fatalf("bucket: %+v", bucket)
	}
	for _, path := range []string{"/healthz", "/pools", "/pools/default", "/pools/default/buckets"} {
		var v any
		if path == "/healthz" {
			resp := httpGet(t, "http://"+nodes[1].HTTPAddr()+path)
			if resp != "ok\n" {
				t.Errorf("/healthz: %q", resp)
			}
			continue
		}
		getJSON(t, "http://"+nodes[1].HTTPAddr()+path, &v)
	}
}

// A raw binary-protocol client for the tests.

type rawConn struct {
	nc net.Conn
	br *bufio.Reader
}

func dial(t *testing.T, addr string) *rawConn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawConn{nc: nc, br: bufio.NewReader(nc)}
}

func (c *rawConn) send(op protocol.Opcode, vb uint16, key string, extras []byte, value string) {
	c.sendOpaque(op, vb, key, extras, value, 0)
}

func (c *rawConn) sendOpaque(op protocol.Opcode, vb uint16, key string, extras []byte, value string, opaque uint32) {
	c.nc.Write(protocol.AppendFrame(nil, &protocol.Frame{
		Magic: protocol.MagicRequest, Opcode: op, VBucket: vb, Opaque: opaque,
		Extras: extras, Key: []byte(key), Value: []byte(value),
	}))
}

func (c *rawConn) recv(t *testing.T) (protocol.Status, protocol.Request) {
	t.Helper()
	hdr := make([]byte, protocol.HeaderLen)
	if _, err := io.ReadFull(c.br, hdr); err != nil {
		t.Fatalf("reading response: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[8:12]))
	if _, err := io.ReadFull(c.br, body); err != nil {
		t.Fatalf("reading response body: %v", err)
	}
	resp, _, err := protocol.Parse(append(hdr, body...), protocol.MagicResponse, ^uint32(0))
	if err != nil {
		t.Fatalf("bad response: %v", err)
	}
	return resp.Status(), resp
}

func readFull(c *rawConn, b []byte) (int, error) { return io.ReadFull(c.br, b) }
