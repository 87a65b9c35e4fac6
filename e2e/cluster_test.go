//go:build linux

package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Cluster tests: several node processes started with the cluster flags
// (-gossip, -http, -name, -join), joined over gossip on loopback, and real
// clients pointed at them: legacy clients that know nothing of vbuckets (the
// node hashes and forwards), a vbucket-aware Couchbase client (gocbcore,
// gocbcore_test.go), memccapable, and scripts/cluster.sh.

const (
	// clusterTimeout bounds the wait for a started cluster to agree: every
	// member alive everywhere, one rev, every member owning vbuckets.
	clusterTimeout = 90 * time.Second
	// httpTimeout bounds one request to a node's HTTP endpoint.
	httpTimeout = 2 * time.Second
	// memdTimeout bounds one request of the test's own binary-protocol client.
	memdTimeout = 5 * time.Second
	// scriptTimeout bounds one run of scripts/cluster.sh (start builds the node).
	scriptTimeout = buildTimeout + 2*time.Minute
)

// clusterNode is one node of a cluster started by startCluster.
type clusterNode struct {
	name   string // -name
	kv     string // memcached binary protocol address, -listen
	gossip string // -gossip
	http   string // -http
	srv    *server
}

// clusterView is what a node's GET /cluster answers.
type clusterView struct {
	Node        string          `json:"node"`
	Rev         int64           `json:"rev"`
	VBuckets    int             `json:"vbuckets"`
	Replicas    int             `json:"replicas"`
	Coordinator string          `json:"coordinator"`
	Members     []clusterMember `json:"members"`
	Map         struct {
		Rev      int64 `json:"rev"`
		Replicas int   `json:"replicas"`
		Servers  []struct {
			Name string `json:"name"`
			KV   string `json:"kv"`
			HTTP string `json:"http"`
		} `json:"servers"`
		VBuckets [][]int `json:"vbuckets"`
		Forward  [][]int `json:"forward"` // set while a rebalance moves vbuckets
	} `json:"map"`
	Progress struct {
		VBucketsMoving int `json:"vbuckets_moving"`
	} `json:"progress"`
}

// owners names the servers of vb's row, active first.
func (v *clusterView) owners(vb uint16) string {
	var names []string
	for _, i := range v.Map.VBuckets[vb] {
		if i >= 0 && i < len(v.Map.Servers) {
			names = append(names, v.Map.Servers[i].Name)
		}
	}
	return strings.Join(names, ",")
}

type clusterMember struct {
	Name            string `json:"name"`
	State           string `json:"state"`
	KV              string `json:"kv"`
	HTTP            string `json:"http"`
	Gossip          string `json:"gossip"`
	ActiveVBuckets  int    `json:"active_vbuckets"`
	ReplicaVBuckets int    `json:"replica_vbuckets"`
}

// summary renders a view in one line for logs.
func (v *clusterView) summary() string {
	var ms []string
	for _, m := range v.Members {
		ms = append(ms, fmt.Sprintf("%s:%s/a%d/r%d", m.Name, m.State, m.ActiveVBuckets, m.ReplicaVBuckets))
	}
	return fmt.Sprintf("node=%s rev=%d map.rev=%d vbuckets=%d map.servers=%d coordinator=%s members=[%s]",
		v.Node, v.Rev, v.Map.Rev, v.VBuckets, len(v.Map.Servers), v.Coordinator, strings.Join(ms, " "))
}

// requireNode skips a cluster test when E2E_SERVER=memcached: memcached has
// no cluster mode (as TestAuth skips for SASL).
func requireNode(t *testing.T) {
	t.Helper()
	if h.memcached {
		t.Skip("E2E_SERVER=memcached: memcached has no cluster mode")
	}
}

// startCluster starts n nodes of the built binary on free loopback ports,
// node0 first and every other node joining node0's gossip address, adding
// extraArgs to every command line. It waits (bounded by clusterTimeout) until
// every node agrees on the cluster (see waitCluster) and returns the nodes
// and node0's view of the agreed cluster. All nodes are stopped together
// with SIGTERM in t.Cleanup, where a node that crashed or did not exit 0
// fails the test, and every node's output is logged if the test failed.
// A test that stops nodes itself uses startFailoverCluster.
func startCluster(t *testing.T, n int, extraArgs ...string) ([]*clusterNode, *clusterView) {
	t.Helper()
	fc := startFailoverCluster(t, n, extraArgs...)
	return fc.nodes, fc.view
}

// launchClusterNode starts node i with extraArgs, joining the first of
// running if any. A port found free can be taken before the node binds it:
// it retries with fresh ports.
func launchClusterNode(t *testing.T, i int, running []*clusterNode, extraArgs []string) *clusterNode {
	t.Helper()
	const attempts = 3
	for attempt := 1; ; attempt++ {
		nd := &clusterNode{name: fmt.Sprintf("node%d", i)}
		var err error
		if nd.kv, err = freeLoopbackAddr(); err == nil {
			if nd.http, err = freeLoopbackAddr(); err == nil {
				nd.gossip, err = freeGossipAddr()
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"-gossip", nd.gossip, "-http", nd.http, "-name", nd.name}
		if len(running) > 0 {
			args = append(args, "-join", running[0].gossip)
		}
		args = append(append(args, extraArgs...), clusterExtraArgs()...)
		s, err := launch(nd.kv, args)
		if err == nil {
			nd.srv = s
			return nd
		}
		if !errors.Is(err, errExited) || attempt == attempts {
			t.Fatalf("starting %s (%s %s): %v\nnode output:\n%s", nd.name, h.bin, strings.Join(args, " "), err, s.out)
		}
		t.Logf("%s attempt %d: %v; output:\n%s", nd.name, attempt, err, s.out)
	}
}

// clusterExtraArgs are flags from E2E_NODE_ARGS (split on spaces), added to
// every cluster node started by startCluster, e.g.
// E2E_NODE_ARGS="-vbuckets 64 -log-level debug".
func clusterExtraArgs() []string { return strings.Fields(os.Getenv("E2E_NODE_ARGS")) }

// freeGossipAddr returns a loopback address whose port is free for both TCP
// and UDP: memberlist gossips over UDP and syncs state over TCP on one port.
func freeGossipAddr() (string, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			u.Close()
			return addr, nil
		}
	}
	return "", errors.New("no loopback port free for both TCP and UDP")
}

// getCluster fetches and decodes http://addr/cluster.
func getCluster(ctx context.Context, addr string) (*clusterView, error) {
	body, status, err := httpGet(ctx, addr, "/cluster")
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("GET /cluster: status %d: %.200s", status, body)
	}
	var v clusterView
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, fmt.Errorf("GET /cluster: %w: %.300s", err, body)
	}
	return &v, nil
}

func httpGet(ctx context.Context, addr, path string) ([]byte, int, error) {
	ctx, cancel := context.WithTimeout(ctx, httpTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return body, resp.StatusCode, err
}

// clusterProblems says what keeps nodes from one settled map, or nothing:
// every node answers /healthz 200 and /cluster with exactly these nodes
// alive (members that left or died may still be listed), one rev
// everywhere, no forward map, a map whose servers are exactly these nodes
// at their kv addresses with one row per vbucket, and every alive member
// owning active vbuckets that add up to all of them. It returns the views
// it read.
func clusterProblems(ctx context.Context, nodes []*clusterNode) ([]string, []*clusterView) {
	want := map[string]string{} // name -> kv
	var names []string
	for _, nd := range nodes {
		want[nd.name] = nd.kv
		names = append(names, nd.name)
	}
	slices.Sort(names)
	var problems []string
	views := make([]*clusterView, len(nodes))
	for i, nd := range nodes {
		if _, status, err := httpGet(ctx, nd.http, "/healthz"); err != nil || status != http.StatusOK {
			problems = append(problems, fmt.Sprintf("%s: /healthz: status %d, err %v", nd.name, status, err))
			continue
		}
		v, err := getCluster(ctx, nd.http)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", nd.name, err))
			continue
		}
		views[i] = v
		var alive []string
		active := 0
		for _, m := range v.Members {
			if m.State != "alive" {
				continue
			}
			alive = append(alive, m.Name)
			active += m.ActiveVBuckets
			if m.ActiveVBuckets == 0 {
				problems = append(problems, fmt.Sprintf("%s: alive member %s owns no active vbucket", nd.name, m.Name))
			}
		}
		slices.Sort(alive)
		if !slices.Equal(alive, names) {
			problems = append(problems, fmt.Sprintf("%s: alive members %v, want %v", nd.name, alive, names))
		}
		if v.VBuckets <= 0 || active != v.VBuckets {
			problems = append(problems, fmt.Sprintf("%s: active vbuckets of alive members add up to %d of %d", nd.name, active, v.VBuckets))
		}
		if len(v.Map.Forward) > 0 {
			problems = append(problems, fmt.Sprintf("%s: map rev %d has a forward map (%d vbuckets moving)", nd.name, v.Map.Rev, v.Progress.VBucketsMoving))
		}
		var servers []string
		for _, s := range v.Map.Servers {
			servers = append(servers, s.Name)
			if kv, ok := want[s.Name]; ok && kv != s.KV {
				problems = append(problems, fmt.Sprintf("%s: map server %s has kv %s, want %s", nd.name, s.Name, s.KV, kv))
			}
		}
		slices.Sort(servers)
		if !slices.Equal(servers, names) {
			problems = append(problems, fmt.Sprintf("%s: map rev %d servers %v, want %v", nd.name, v.Map.Rev, servers, names))
		}
		if len(v.Map.VBuckets) != v.VBuckets {
			problems = append(problems, fmt.Sprintf("%s: map has %d rows, want %d", nd.name, len(v.Map.VBuckets), v.VBuckets))
		}
		if first := views[0]; first != nil && v.Rev != first.Rev {
			problems = append(problems, fmt.Sprintf("%s: rev %d, %s has rev %d", nd.name, v.Rev, nodes[0].name, first.Rev))
		}
	}
	return problems, views
}

// waitCluster polls every node until clusterProblems finds none, and returns
// node0's view. It fails the test if a node exits or timeout passes, with
// what still disagreed and every node's last view.
func waitCluster(t *testing.T, nodes []*clusterNode, timeout time.Duration) *clusterView {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		problems, views := clusterProblems(t.Context(), nodes)
		if len(problems) == 0 {
			t.Logf("cluster agreed after %v: %s", time.Since(start).Round(time.Millisecond), views[0].summary())
			return views[0]
		}
		for _, nd := range nodes {
			select {
			case <-nd.srv.done:
				t.Fatalf("%s exited while the cluster formed: %v", nd.name, nd.srv.err)
			default:
			}
		}
		if time.Now().After(deadline) {
			var last []string
			for i, v := range views {
				if v != nil {
					last = append(last, nodes[i].name+": "+v.summary())
				}
			}
			t.Fatalf("the %d nodes did not agree within %v:\n  %s\nlast views:\n  %s",
				len(nodes), timeout, strings.Join(problems, "\n  "), strings.Join(last, "\n  "))
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-tick.C:
		}
	}
}

// checkMap checks the shape of an agreed map: one row per vbucket, each row
// an active server index and Replicas more entries (-1 or another server),
// and servers whose kv addresses are the nodes'.
func checkMap(t *testing.T, v *clusterView, nodes []*clusterNode) {
	t.Helper()
	var errs []string
	if len(v.Map.VBuckets) != v.VBuckets {
		errs = append(errs, fmt.Sprintf("map has %d rows, want vbuckets=%d", len(v.Map.VBuckets), v.VBuckets))
	}
	if v.VBuckets&(v.VBuckets-1) != 0 {
		errs = append(errs, fmt.Sprintf("vbuckets=%d is not a power of two", v.VBuckets))
	}
	n := len(v.Map.Servers)
	for vb, row := range v.Map.VBuckets {
		if len(row) != v.Map.Replicas+1 {
			errs = append(errs, fmt.Sprintf("vb %d: row %v, want %d entries", vb, row, v.Map.Replicas+1))
		} else if row[0] < 0 || row[0] >= n {
			errs = append(errs, fmt.Sprintf("vb %d: active server %d not in 0..%d", vb, row[0], n-1))
		} else {
			for _, r := range row[1:] {
				if r != -1 && (r < 0 || r >= n || r == row[0]) {
					errs = append(errs, fmt.Sprintf("vb %d: bad replica in row %v", vb, row))
				}
			}
		}
		if len(errs) > 10 {
			break
		}
	}
	kvs := map[string]bool{}
	for _, nd := range nodes {
		kvs[nd.kv] = true
	}
	for _, s := range v.Map.Servers {
		if !kvs[s.KV] {
			errs = append(errs, fmt.Sprintf("map server %s has kv %q, not a node's address", s.Name, s.KV))
		}
	}
	if len(errs) > 0 {
		t.Errorf("map of rev %d:\n  %s", v.Rev, strings.Join(errs, "\n  "))
	}
}

// vbucketOf is the vbucket of key among n, the hash every Couchbase client
// uses (PROTOCOL.md).
func vbucketOf(key []byte, n int) uint16 {
	crc := crc32.ChecksumIEEE(key)
	return uint16(((crc >> 16) & 0x7fff) & uint32(n-1))
}

func TestVbucketOf(t *testing.T) {
	for _, tc := range []struct {
		key        string
		n1024, n64 uint16
	}{
		{"foo", 115, 51}, {"hello", 528, 16}, {"key-0", 491, 43}, {"", 0, 0}, {"test_key", 1005, 45},
	} {
		if got := vbucketOf([]byte(tc.key), 1024); got != tc.n1024 {
			t.Errorf("vbucketOf(%q, 1024) = %d, want %d", tc.key, got, tc.n1024)
		}
		if got := vbucketOf([]byte(tc.key), 64); got != tc.n64 {
			t.Errorf("vbucketOf(%q, 64) = %d, want %d", tc.key, got, tc.n64)
		}
	}
}

// memdConn is the test's own minimal binary-protocol client: one request at
// a time, for checks that need a chosen header vbucket.
type memdConn struct {
	c      net.Conn
	r      *bufio.Reader
	opaque uint32
}

func dialMemd(addr string) (*memdConn, error) {
	c, err := net.DialTimeout("tcp", addr, memdTimeout)
	if err != nil {
		return nil, err
	}
	return &memdConn{c: c, r: bufio.NewReader(c)}, nil
}

func (m *memdConn) Close() error { return m.c.Close() }

// memdResponse is a decoded response.
type memdResponse struct {
	status   uint16
	dataType uint8
	extras   []byte
	key      []byte
	value    []byte
}

// do sends one request and reads its response.
func (m *memdConn) do(op uint8, vb uint16, key, extras, value []byte) (memdResponse, error) {
	m.opaque++
	req := make([]byte, headerLen, headerLen+len(extras)+len(key)+len(value))
	req[0], req[1] = magicRequest, op
	binary.BigEndian.PutUint16(req[2:], uint16(len(key)))
	req[4] = uint8(len(extras))
	binary.BigEndian.PutUint16(req[6:], vb)
	binary.BigEndian.PutUint32(req[8:], uint32(len(extras)+len(key)+len(value)))
	binary.BigEndian.PutUint32(req[12:], m.opaque)
	req = append(append(append(req, extras...), key...), value...)
	m.c.SetDeadline(time.Now().Add(memdTimeout))
	if _, err := m.c.Write(req); err != nil {
		return memdResponse{}, err
	}
	var hb [headerLen]byte
	if _, err := io.ReadFull(m.r, hb[:]); err != nil {
		return memdResponse{}, err
	}
	hd := parseHeader(hb[:])
	if hd.magic != magicResponse || hd.opcode != op || hd.opaque != m.opaque {
		return memdResponse{}, fmt.Errorf("response %s to %s opaque %#x", describe(hd, nil), opcodeName(op), m.opaque)
	}
	if int(hd.extLen)+int(hd.keyLen) > int(hd.bodyLen) {
		return memdResponse{}, fmt.Errorf("malformed response %s", describe(hd, nil))
	}
	body := make([]byte, hd.bodyLen)
	if _, err := io.ReadFull(m.r, body); err != nil {
		return memdResponse{}, err
	}
	e, k := int(hd.extLen), int(hd.extLen)+int(hd.keyLen)
	return memdResponse{status: hd.vbStatus, dataType: hd.dataType, extras: body[:e], key: body[e:k], value: body[k:]}, nil
}

// Opcodes and statuses of the cluster checks beyond auth_test.go's.
const (
	opHello            = 0x1f
	statusNotMyVbucket = 0x07
)

// clusterKeyValue is the value tests/clients/cluster_keys.py stores under
// key (its value_for).
func clusterKeyValue(key string) []byte {
	n := 0
	if i := strings.LastIndexByte(key, '-'); i >= 0 {
		n, _ = strconv.Atoi(key[i+1:])
	}
	unit := key + ":"
	size := 1 + n%300
	if n%97 == 0 {
		size = 20_000
	}
	return []byte(strings.Repeat(unit, size/len(unit)+1)[:size])
}

// checkStoredAtOwner checks, as a vbucket-aware client, where keys live: a
// GET carrying the key's vbucket finds the value at the vbucket's active
// node, and another node answers NOT_MY_VBUCKET with a config JSON body.
func checkStoredAtOwner(t *testing.T, nodes []*clusterNode, keys []string) {
	t.Helper()
	v, err := getCluster(t.Context(), nodes[0].http)
	if err != nil {
		t.Fatal(err)
	}
	byKV := map[string]*memdConn{}
	for _, nd := range nodes {
		c, err := dialMemd(nd.kv)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A HELLO makes the connection vbucket-aware: no forwarding.
		if r, err := c.do(opHello, 0, []byte("vbcache-e2e"), nil, nil); err != nil || r.status != statusOK {
			t.Fatalf("%s: HELLO: status %#x, err %v", nd.name, r.status, err)
		}
		byKV[nd.kv] = c
	}
	var errs []string
	nmvb := 0
	for _, key := range keys {
		vb := vbucketOf([]byte(key), v.VBuckets)
		row := v.Map.VBuckets[vb]
		owner := v.Map.Servers[row[0]]
		want := clusterKeyValue(key)
		r, err := byKV[owner.KV].do(opGet, vb, []byte(key), nil, nil)
		switch {
		case err != nil:
			t.Fatalf("GET %q vb %d at owner %s: %v", key, vb, owner.Name, err)
		case r.status != statusOK:
			errs = append(errs, fmt.Sprintf("GET %q vb %d at owner %s: status %s", key, vb, owner.Name, statusName(r.status)))
		case string(r.value) != string(want):
			errs = append(errs, fmt.Sprintf("GET %q vb %d at owner %s: %d bytes %.40q, want %d bytes %.40q",
				key, vb, owner.Name, len(r.value), r.value, len(want), want))
		}
		other := v.Map.Servers[(row[0]+1)%len(v.Map.Servers)]
		r, err = byKV[other.KV].do(opGet, vb, []byte(key), nil, nil)
		if err != nil {
			t.Fatalf("GET %q vb %d at non-owner %s: %v", key, vb, other.Name, err)
		}
		if r.status != statusNotMyVbucket {
			errs = append(errs, fmt.Sprintf("GET %q vb %d at non-owner %s (owner %s): status %s, want 0x07(not-my-vbucket)",
				key, vb, other.Name, owner.Name, statusName(r.status)))
		} else {
			nmvb++
			var cfg struct {
				Rev int64 `json:"rev"`
			}
			if err := json.Unmarshal(r.value, &cfg); err != nil || r.dataType&0x01 == 0 {
				errs = append(errs, fmt.Sprintf("NOT_MY_VBUCKET from %s: datatype %#x, body not a config (%v): %.100q",
					other.Name, r.dataType, err, r.value))
			} else if cfg.Rev < v.Rev {
				errs = append(errs, fmt.Sprintf("NOT_MY_VBUCKET from %s carries rev %d, older than %d", other.Name, cfg.Rev, v.Rev))
			}
		}
		if len(errs) >= 10 {
			break
		}
	}
	if len(errs) > 0 {
		t.Errorf("vbucket-aware reads of %d keys (map rev %d):\n  %s", len(keys), v.Rev, strings.Join(errs, "\n  "))
	} else {
		t.Logf("%d keys found at their owners; %d NOT_MY_VBUCKET answers from other nodes", len(keys), nmvb)
	}
}

// clientOK matches the last line of a successful cluster_keys.py run.
var clientOK = regexp.MustCompile(`(?m)^ok: `)

// TestClusterLegacyClients points legacy clients, which send vbucket 0 to
// the one server they are given, at single nodes of a 3-node cluster: pylibmc
// at node0 and python-binary-memcached at node1 each write 2,000 keys, read
// them back through the same node (get_multi pipelines whose keys have
// different owners) and then through every other node.
func TestClusterLegacyClients(t *testing.T) {
	requirePythonModule(t, "pylibmc", "python3-pylibmc")
	requirePythonModule(t, "bmemcached", "python3-binary-memcached")
	nodes, _ := startCluster(t, 3)
	addrs := make([]string, len(nodes))
	for i, nd := range nodes {
		addrs[i] = connectAddr(t, nd.kv)
	}
	const count = 2000
	suffix := strconv.FormatUint(rand.Uint64(), 36)
	clients := []struct {
		client string
		node   int
		prefix string
	}{
		{"pylibmc", 0, "plm-" + suffix + "-"},
		{"bmemcached", 1, "bm-" + suffix + "-"},
	}
	run := func(client, prefix, action string, node int) bool {
		t.Helper()
		out, err := runClient(t, python, "tests/clients/cluster_keys.py", client, prefix, strconv.Itoa(count), action, addrs[node])
		if err != nil || !clientOK.MatchString(out) {
			t.Errorf("%s %s through %s: %v (output above)", client, action, nodes[node].name, err)
			return false
		}
		return true
	}
	for _, c := range clients {
		if run(c.client, c.prefix, "set", c.node) {
			run(c.client, c.prefix, "get", c.node)
		}
	}
	for _, c := range clients {
		for i := range nodes {
			if i != c.node {
				run(c.client, c.prefix, "get", i)
			}
		}
	}
	// pylibmc stores bytes as they are (bmemcached compresses large values),
	// so its keys can be compared byte for byte at their owners.
	var keys []string
	for i := 0; i < count; i += 13 {
		keys = append(keys, fmt.Sprintf("%s%d", clients[0].prefix, i))
	}
	checkStoredAtOwner(t, nodes, keys)
}

// TestClusterMemccapable runs `memccapable -b` against one node of a 3-node
// cluster: every binary test must pass although most keys live elsewhere.
func TestClusterMemccapable(t *testing.T) {
	requireTool(t, "memccapable", "libmemcached-tools")
	nodes, _ := startCluster(t, 3)
	checkMemccapable(t, connectAddr(t, nodes[1].kv))
}

// clusterScript runs scripts/cluster.sh against one cluster directory.
type clusterScript struct {
	t    *testing.T
	base int
	dir  string
}

// newClusterScript picks a BASE_PORT whose n memcached, gossip and HTTP ports
// are free and a temporary CLUSTER_DIR. In t.Cleanup it runs `stop`, kills
// any node left (found through the pid files) and, if the test failed, logs
// every node's log.
func newClusterScript(t *testing.T, n int) *clusterScript {
	t.Helper()
	requireNode(t)
	requireTool(t, "bash", "bash")
	cs := &clusterScript{t: t, base: freeBasePort(t, n), dir: t.TempDir()}
	t.Cleanup(func() {
		cs.run("stop")
		cs.killLeftovers()
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(cs.dir, "node*.log"))
			for _, f := range logs {
				b, _ := os.ReadFile(f)
				t.Logf("%s:\n%s", f, b)
			}
		}
	})
	t.Logf("BASE_PORT=%d CLUSTER_DIR=%s", cs.base, cs.dir)
	return cs
}

// freeBasePort returns a base port p such that p+i, p+1000+i and p+2000+i
// (i < n) are free on 127.0.0.1, below the usual ephemeral port range.
func freeBasePort(t *testing.T, n int) int {
	t.Helper()
	for range 100 {
		base := 20000 + rand.IntN(10000-n)
		if portsFree(base, n) {
			return base
		}
	}
	t.Fatal("found no free BASE_PORT in 20000..30000")
	return 0
}

func portsFree(base, n int) bool {
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for _, off := range []int{0, 1000, 2000} {
		for i := range n {
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(base+off+i))
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return false
			}
			closers = append(closers, l)
			if off == 1000 {
				u, err := net.ListenPacket("udp", addr)
				if err != nil {
					return false
				}
				closers = append(closers, u)
			}
		}
	}
	return true
}

// run runs scripts/cluster.sh with args from a directory outside the
// repository, bounded by scriptTimeout (not by t.Context, which has ended
// when the cleanup runs `stop`), and logs and returns its output.
func (cs *clusterScript) run(args ...string) (string, error) {
	t := cs.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(h.root, "scripts", "cluster.sh"), args...)
	cmd.Dir = cs.dir
	// STOP_TIMEOUT=20, below the node's 30s -drain-timeout: a node that
	// needs its whole drain timeout to stop (it stops at once when idle)
	// fails `stop`. NODE_BIN and NODE_ARGS from the caller's environment
	// would change what is tested.
	cmd.Env = append(os.Environ(), "BASE_PORT="+strconv.Itoa(cs.base), "CLUSTER_DIR="+cs.dir,
		"START_TIMEOUT=60", "STOP_TIMEOUT=20", "NODE_BIN=", "NODE_ARGS=")
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("did not finish within %v: %w", scriptTimeout, err)
	}
	t.Logf("$ scripts/cluster.sh %s  (exit %v)\n%s", strings.Join(args, " "), err, out)
	return string(out), err
}

// killLeftovers SIGKILLs every process named in a pid file of the cluster
// directory that still runs the directory's node binary.
func (cs *clusterScript) killLeftovers() {
	pids, _ := filepath.Glob(filepath.Join(cs.dir, "node*.pid"))
	bin := filepath.Join(cs.dir, "node")
	for _, f := range pids {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.HasPrefix(string(cmdline), bin+"\x00") {
			continue
		}
		cs.t.Errorf("node pid %d (%s) still running after stop; killing it", pid, f)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// statusLine matches a running node's line of `cluster.sh status`.
var (
	statusLine    = regexp.MustCompile(`(?m)^node(\d+)\s+pid \d+\s+alive\s+kv (\S+)\s+gossip \S+\s+http \S+\s+rev (\d+)\s+members (\d+) `)
	statusSummary = regexp.MustCompile(`(?m)^(\d+) healthy members, one rev (\d+)$`)
)

// waitStatus runs `status` until it exits 0 reporting want healthy members,
// bounded by clusterTimeout, and returns its output.
func (cs *clusterScript) waitStatus(want int) string {
	t := cs.t
	t.Helper()
	deadline := time.Now().Add(clusterTimeout)
	for {
		out, err := cs.run("status")
		if m := statusSummary.FindStringSubmatch(out); err == nil && m != nil && atoi(m[1]) == want {
			lines := statusLine.FindAllStringSubmatch(out, -1)
			if len(lines) != want {
				t.Errorf("status: %d lines of alive nodes with a rev, want %d", len(lines), want)
			}
			for _, l := range lines {
				if l[3] != m[2] || atoi(l[4]) != want {
					t.Errorf("status: node%s reports rev %s and %s members; summary says rev %s, %d members", l[1], l[3], l[4], m[2], want)
				}
			}
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("status did not report %d healthy members and one rev within %v", want, clusterTimeout)
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(time.Second):
		}
	}
}

// kvAddr is node i's memcached address under the script's port layout.
func (cs *clusterScript) kvAddr(i int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(cs.base+i))
}

// TestClusterScript runs scripts/cluster.sh start 3, requires `status` to
// show 3 healthy members and one rev, checks that a key set through node0 is
// read through node2, and stops the cluster.
func TestClusterScript(t *testing.T) {
	cs := newClusterScript(t, 3)
	if out, err := cs.run("start", "3"); err != nil {
		t.Fatalf("start 3: %v", err)
	} else if !strings.Contains(out, "cluster of 3 nodes is up") {
		t.Errorf("start 3 did not report %q", "cluster of 3 nodes is up")
	}
	cs.waitStatus(3)

	// A legacy request (vbucket 0, no HELLO) through node0, read through node2.
	key, value := []byte("cluster-script-key"), []byte("cluster-script-value")
	for i, op := range []uint8{opSet, opGet} {
		c, err := dialMemd(cs.kvAddr(2 * i))
		if err != nil {
			t.Fatal(err)
		}
		var extras, val []byte
		if op == opSet {
			extras, val = make([]byte, 8), value
		}
		r, err := c.do(op, 0, key, extras, val)
		c.Close()
		if err != nil || r.status != statusOK || op == opGet && string(r.value) != string(value) {
			t.Errorf("%s %q through node%d: status %s, value %q, err %v", opcodeName(op), key, 2*i, statusName(r.status), r.value, err)
		}
	}

	out, err := cs.run("stop")
	if err != nil || !strings.Contains(out, "stopped 3 nodes") {
		t.Errorf("stop: %v, want %q", err, "stopped 3 nodes")
	}
	out, err = cs.run("status")
	if err == nil || strings.Count(out, " dead ") != 3 || !strings.Contains(out, "no node is running") {
		t.Errorf("status after stop: exit %v; want 3 dead nodes, %q and a failure exit", err, "no node is running")
	}
}

// TestClusterScriptMembership changes a cluster through the script: add a
// fourth node, remove it, then kill one; each time `status` must come back
// to every running node agreeing.
func TestClusterScriptMembership(t *testing.T) {
	cs := newClusterScript(t, 4)
	if _, err := cs.run("start", "3"); err != nil {
		t.Fatalf("start 3: %v", err)
	}
	cs.waitStatus(3)
	if _, err := cs.run("add"); err != nil {
		t.Fatalf("add: %v", err)
	}
	cs.waitStatus(4)
	if _, err := cs.run("remove", "3"); err != nil {
		t.Fatalf("remove 3: %v", err)
	}
	cs.waitStatus(3)
	if _, err := cs.run("kill", "2"); err != nil {
		t.Fatalf("kill 2: %v", err)
	}
	cs.waitStatus(2)
	if out, err := cs.run("stop"); err != nil || !strings.Contains(out, "stopped 2 nodes") {
		t.Errorf("stop: %v, want %q", err, "stopped 2 nodes")
	}
}
