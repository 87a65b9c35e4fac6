package node

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"vbcache/protocol"
	"vbcache/vbucket"
)

// A cluster that lets no one in: gossip encrypted with a key, SASL PLAIN
// for clients and between nodes.

// testUsers are the auth file of the secure clusters: nodes authenticate
// to each other as testPeerUser, clients as alice.
var testUsers = map[string]string{"vbcache": "node-secret", "alice": "wonderland"}

const testPeerUser = "vbcache"

func gossipKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

// startSecureCluster starts n nodes with cfg's security settings, each
// joining the first, and waits until they hold one map.
func startSecureCluster(t *testing.T, n int, cfg Config) []*testNode {
	t.Helper()
	nodes := []*testNode{startNodeWith(t, "node0", cfg)}
	for i := 1; i < n; i++ {
		c := cfg
		c.Seeds = []string{nodes[0].Cluster().GossipAddr()}
		nodes = append(nodes, startNodeWith(t, fmt.Sprintf("node%d", i), c))
	}
	waitConverged(t, nodes)
	return nodes
}

// waitLog waits until one of nodes has logged a line containing every
// one of parts.
func waitLog(t *testing.T, nodes []*testNode, parts ...string) {
	t.Helper()
	waitLogAfter(t, nodes, nil, parts...)
}

// logMarks returns how much each node has logged so far.
func logMarks(nodes []*testNode) []int {
	marks := make([]int, len(nodes))
	for i, n := range nodes {
		marks[i] = len(n.log.String())
	}
	return marks
}

// waitLogAfter is waitLog for lines logged after marks (from logMarks;
// nil: all).
func waitLogAfter(t *testing.T, nodes []*testNode, marks []int, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(convergeTimeout)
	for {
		for i, n := range nodes {
			log := n.log.String()
			if marks != nil {
				log = log[marks[i]:]
			}
			for _, line := range strings.Split(log, "\n") {
				if containsAll(line, parts) {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no node logged a line with %q", parts)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// login dials addr and authenticates with SASL PLAIN; it returns the
// connection and the status of SASL_AUTH.
func login(t *testing.T, addr, user, pass string) (*rawConn, protocol.Status) {
	t.Helper()
	c := dial(t, addr)
	c.send(protocol.OpSASLAuth, 0, "PLAIN", nil, "\x00"+user+"\x00"+pass)
	st, _ := c.recv(t)
	return c, st
}

// checkServesAuthenticated has a legacy client (no HELLO: the node
// forwards for it) authenticate on every node and write keys that fall on
// every node, then read each back through every node; each key must be on
// its vbucket's active and replica servers.
func checkServesAuthenticated(t *testing.T, nodes []*testNode, prefix string) {
	t.Helper()
	m := waitConverged(t, nodes)
	conns := make([]*rawConn, len(nodes))
	for i, n := range nodes {
		c, st := login(t, n.KVAddr(), "alice", testUsers["alice"])
		if st != protocol.StatusOK {
			t.Fatalf("alice's right password on %s: status 0x%02x", n.name, st)
		}
		conns[i] = c
	}
	const keys = 30
	owners := map[int]bool{}
	for i := range keys {
		k := fmt.Sprintf("%s-%d", prefix, i)
		owners[m.Active(vbucket.VBucket([]byte(k), m.NumVBuckets()))] = true
		c := conns[i%len(conns)]
		c.send(protocol.OpSet, 0, k, make([]byte, 8), "v-"+k)
		if st, _ := c.recv(t); st != protocol.StatusOK {
			t.Fatalf("SET %s on %s: status 0x%02x", k, nodes[i%len(nodes)].name, st)
		}
	}
	if len(owners) != len(nodes) {
		t.Fatalf("keys fall on %d nodes, want %d", len(owners), len(nodes))
	}
	for i := range keys {
		k := fmt.Sprintf("%s-%d", prefix, i)
		for j, c := range conns {
			c.send(protocol.OpGet, 0, k, nil, "")
			if st, resp := c.recv(t); st != protocol.StatusOK || string(resp.Value) != "v-"+k {
				t.Fatalf("GET %s on %s: status 0x%02x value %q", k, nodes[j].name, st, resp.Value)
			}
		}
		row := m.VBuckets[vbucket.VBucket([]byte(k), m.NumVBuckets())]
		for _, n := range nodes {
			_, _, ok := n.Store().Get([]byte(k), nil)
			if want := slices.Contains(row, m.IndexOf(n.name)); ok != want {
				t.Fatalf("%s on %s: %v; its vbucket is on %v", k, n.name, ok, row)
			}
		}
	}
}

// TestSecureCluster: in a 3-node cluster with a gossip key and an auth
// file, nodes with the wrong gossip key or none are refused and say why,
// clients with the wrong password are refused, and authenticated clients
// are served on every node, through forwarding and replication between
// the nodes, before and after the refusals.
func TestSecureCluster(t *testing.T) {
	key := gossipKey(t)
	cfg := Config{Users: testUsers, PeerUser: testPeerUser, GossipKey: key}
	nodes := startSecureCluster(t, 3, cfg)
	before := waitConverged(t, nodes)

	t.Run("authenticated clients on every node", func(t *testing.T) {
		checkServesAuthenticated(t, nodes, "before")
	})

	t.Run("wrong password", func(t *testing.T) {
		for _, n := range nodes {
			for _, cred := range [][2]string{{"alice", "wonderlanD"}, {"alice", ""}, {"mallory", "wonderland"}} {
				c, st := login(t, n.KVAddr(), cred[0], cred[1])
				if st != protocol.StatusAuthError {
					t.Fatalf("%s:%s on %s: status 0x%02x, want 0x20", cred[0], cred[1], n.name, st)
				}
				c.send(protocol.OpGet, 0, "before-0", nil, "")
				if st, _ := c.recv(t); st != protocol.StatusAuthError {
					t.Fatalf("GET after a refused login on %s: status 0x%02x, want 0x20", n.name, st)
				}
			}
		}
	})

	seed := []string{nodes[0].Cluster().GossipAddr()}
	for _, tc := range []struct {
		name          string
		key           []byte
		joiner, seeds string // what the refused node and the cluster log
	}{
		{"wrong gossip key", gossipKey(t), "the seed's gossip key differs from this node's", "a node with another gossip key was refused"},
		{"no gossip key", nil, "the cluster encrypts gossip and this node has no gossip key", "a node without the gossip key was refused"},
		{"shorter gossip key", key[:16], "the seed's gossip key differs from this node's", "a node with another gossip key was refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marks := logMarks(nodes)
			bad := startNodeWith(t, "intruder", Config{Users: testUsers, PeerUser: testPeerUser, GossipKey: tc.key, Seeds: seed})
			defer bad.Close()
			waitLog(t, []*testNode{bad}, "level=ERROR", "cannot join the cluster: gossip key mismatch", tc.joiner)
			waitLogAfter(t, nodes, marks, "level=ERROR", tc.seeds)
			if ms := bad.Cluster().Status().Members; len(ms) != 1 {
				t.Errorf("the refused node sees %d members, want itself alone", len(ms))
			}
			for _, n := range nodes {
				for _, mb := range n.Cluster().Status().Members {
					if mb.Name == bad.name {
						t.Errorf("%s lists the refused node as %s", n.name, mb.State)
					}
				}
			}
		})
	}

	t.Run("cluster undisturbed", func(t *testing.T) {
		if after := waitConverged(t, nodes); after.Rev != before.Rev {
			t.Errorf("rev moved from %d to %d", before.Rev, after.Rev)
		}
		checkServesAuthenticated(t, nodes, "after")
	})
}

// TestGossipKeyWhereClusterHasNone: a node with a gossip key cannot join
// a cluster without one either.
func TestGossipKeyWhereClusterHasNone(t *testing.T) {
	plain := startNodeWith(t, "plain", Config{})
	keyed := startNodeWith(t, "keyed", Config{GossipKey: gossipKey(t), Seeds: []string{plain.Cluster().GossipAddr()}})
	waitLog(t, []*testNode{keyed}, "cannot join the cluster: gossip key mismatch", "this node has a gossip key and the seed has none")
	waitLog(t, []*testNode{plain}, "a node with a gossip key was refused; this node has none")
	if ms := plain.Cluster().Status().Members; len(ms) != 1 {
		t.Errorf("the cluster has %d members, want 1", len(ms))
	}
}

// TestPeerCredentialsRefused: a node whose peer credentials differ from
// the cluster's cannot join (its gossip metadata fingerprints them), and
// both sides log why; the cluster's map never includes it and the cluster
// keeps serving.
func TestPeerCredentialsRefused(t *testing.T) {
	for _, tc := range []struct {
		name     string
		users    map[string]string
		peerUser string
		why      string // the reason the refusal gives
	}{
		{"wrong password", map[string]string{"vbcache": "guess", "alice": "wonderland"}, "vbcache", "peer credentials differ"},
		{"another peer user", testUsers, "alice", "peer credentials differ"},
		{"no credentials", nil, "", "presents no peer credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := gossipKey(t)
			nodes := startSecureCluster(t, 2, Config{Users: testUsers, PeerUser: testPeerUser, GossipKey: key})
			before := waitConverged(t, nodes)
			bad := startNodeWith(t, "misconfigured", Config{
				Users: tc.users, PeerUser: tc.peerUser, GossipKey: key, Seeds: []string{nodes[0].Cluster().GossipAddr()},
			})
			defer bad.Close()
			waitLog(t, nodes, "refusing to merge", "misconfigured", tc.why)
			waitLog(t, []*testNode{bad}, "refusing to merge", "peer credentials")
			for _, n := range nodes {
				if m := n.Cluster().Map(); m.IndexOf(bad.name) >= 0 || m.Rev != before.Rev {
					t.Errorf("%s's map rev %d (was %d) places the refused node at %d", n.name, m.Rev, before.Rev, m.IndexOf(bad.name))
				}
			}
			checkServesAuthenticated(t, nodes, "after-"+strings.ReplaceAll(tc.name, " ", "-"))
		})
	}
}

// TestPeerTrafficNeedsPeerUser: behind the join check, a node serves
// stream messages only to a connection that authenticated as the peer user;
// any other gets 0x20 and the node logs why.
func TestPeerTrafficNeedsPeerUser(t *testing.T) {
	nodes := startSecureCluster(t, 2, Config{Users: testUsers, PeerUser: testPeerUser, GossipKey: gossipKey(t)})
	m := waitConverged(t, nodes)
	recv := nodes[1]
	var vb uint16 // a vbucket recv holds as a replica, so it would apply a copy
	for m.Active(vb) == m.IndexOf(recv.name) {
		vb++
	}
	copyExtras := make([]byte, 24)
	for _, tc := range []struct {
		name, user, pass, why string
	}{
		// First: after a refused SASL the next request is refused for want
		// of authentication too, and that warning comes once per interval.
		{"no authentication", "", "", "sent requests without authenticating"},
		{"another user", "alice", testUsers["alice"], "authenticated as a user other than the peer user"},
		{"wrong password", testPeerUser, "guess", "unknown user or wrong password"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marks := logMarks([]*testNode{recv})
			c := dial(t, recv.KVAddr())
			c.send(protocol.OpHello, 0, "vbcache-peer test", nil, "") // the agent nodes send
			if st, _ := c.recv(t); st != protocol.StatusOK {
				t.Fatalf("HELLO: status 0x%02x", st)
			}
			if tc.user != "" {
				c.send(protocol.OpSASLAuth, 0, "PLAIN", nil, "\x00"+tc.user+"\x00"+tc.pass)
				if st, _ := c.recv(t); st != protocol.StatusAuthError {
					t.Errorf("SASL as %s on a connection that says it is a node: status 0x%02x, want 0x20", tc.user, st)
				}
			}
			c.send(protocol.OpSetWithMeta, vb, "copy", copyExtras, "v")
			if st, _ := c.recv(t); st != protocol.StatusAuthError {
				t.Errorf("SET_WITH_META: status 0x%02x, want 0x20", st)
			}
			waitLogAfter(t, []*testNode{recv}, marks, "level=WARN", "refused a node: wrong peer credentials", tc.why)
		})
	}
}

// TestPprofNeedsAuth: with users, /debug/pprof/ asks for HTTP basic auth
// with one of them; the endpoints clients read stay open.
func TestPprofNeedsAuth(t *testing.T) {
	for _, tc := range []struct {
		name  string
		users map[string]string
	}{{"with users", testUsers}, {"without users", nil}} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := New(Config{Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Users: tc.users, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			base := "http://" + n.HTTPAddr()
			for _, rc := range []struct {
				path, user, pass string
				want             int
			}{
				{"/debug/pprof/", "", "", http.StatusUnauthorized},
				{"/debug/pprof/heap", "alice", "wrong", http.StatusUnauthorized},
				{"/debug/pprof/goroutine", "mallory", "wonderland", http.StatusUnauthorized},
				{"/debug/pprof/", "alice", "wonderland", http.StatusOK},
				{"/debug/pprof/heap", "vbcache", "node-secret", http.StatusOK},
				{"/debug/pprof/cmdline", "alice", "wonderland", http.StatusNotFound},
				{"/healthz", "", "", http.StatusOK},
				{"/pools", "", "", http.StatusOK},
			} {
				want := rc.want
				if tc.users == nil && want == http.StatusUnauthorized {
					want = http.StatusOK
				}
				req, _ := http.NewRequest("GET", base+rc.path, nil)
				if rc.user != "" {
					req.SetBasicAuth(rc.user, rc.pass)
				}
				resp, err := httpClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Errorf("GET %s as %q: %s, want %d", rc.path, rc.user, resp.Status, want)
				}
				if resp.StatusCode == http.StatusUnauthorized && !bytes.Contains([]byte(resp.Header.Get("WWW-Authenticate")), []byte("Basic")) {
					t.Errorf("GET %s: 401 without a Basic challenge", rc.path)
				}
			}
		})
	}
}
