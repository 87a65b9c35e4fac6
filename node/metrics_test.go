package node

import (
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"vbcache/protocol"
	"vbcache/vbucket"
)

// scrape is one parsed /metrics page.
type scrape map[string]*dto.MetricFamily

// scrapeMetrics fetches a node's /metrics over HTTP and parses it.
func scrapeMetrics(t *testing.T, n *Node) scrape {
	t.Helper()
	resp, err := httpClient.Get("http://" + n.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return families
}

// value returns the value of the sample of family name with the given
// label pairs (a counter's or gauge's value, a histogram's count), 0 if
// there is none.
func (s scrape) value(name string, labels ...string) float64 {
	f := s[name]
	if f == nil {
		return 0
	}
	for _, m := range f.Metric {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return 0
}

func hasLabels(m *dto.Metric, pairs []string) bool {
	for i := 0; i < len(pairs); i += 2 {
		if !slices.ContainsFunc(m.Label, func(l *dto.LabelPair) bool {
			return l.GetName() == pairs[i] && l.GetValue() == pairs[i+1]
		}) {
			return false
		}
	}
	return true
}

// waitMetric scrapes n until cond holds of the scrape, for up to
// convergeTimeout, and returns that scrape.
func waitMetric(t *testing.T, n *Node, what string, cond func(scrape) bool) scrape {
	t.Helper()
	deadline := time.Now().Add(convergeTimeout)
	for {
		s := scrapeMetrics(t, n)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics of %s: %s not reached within %v", n.HTTPAddr(), what, convergeTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMetricsCluster sends real traffic to a 3-node cluster and checks that
// /metrics counts it where it was served.
func TestMetricsCluster(t *testing.T) {
	nodes := startCluster(t, 3)
	m := waitConverged(t, nodes)
	a := nodes[0]
	self := m.IndexOf(a.name)
	local, localVB := keyOwnedBy(m, func(i int) bool { return i == self })
	missing := "missing" // never stored, in a vbucket a holds
	for m.Active(vbucket.VBucket([]byte(missing), m.NumVBuckets())) != self {
		missing += "!"
	}
	remote, remoteVB := keyOwnedBy(m, func(i int) bool { return i != self })
	owner := nodes[slices.IndexFunc(nodes, func(n *testNode) bool { return n.name == m.Servers[m.Active(remoteVB)].Name })]
	replica := nodes[slices.IndexFunc(nodes, func(n *testNode) bool { return n.name == m.Servers[m.VBuckets[localVB][1]].Name })]

	// Streams settle after the map does: wait for them before counting.
	for _, n := range nodes {
		waitMetric(t, n.Node, "no pending stream", func(s scrape) bool {
			return s.value("vbcache_rebalance_streams", "state", "pending") == 0 &&
				s.value("vbcache_rebalance_streams", "state", "backfilled") > 0
		})
	}
	before := scrapeMetrics(t, a.Node)
	ownerBefore := scrapeMetrics(t, owner.Node)
	replicaBefore := scrapeMetrics(t, replica.Node)

	// A legacy client: a local SET, hit and miss, and a GET a forwards.
	legacy := dial(t, a.KVAddr())
	legacy.send(protocol.OpSet, 0, local, make([]byte, 8), "value")
	legacy.send(protocol.OpGet, 0, local, nil, "")
	legacy.send(protocol.OpGet, 0, missing, nil, "")
	legacy.send(protocol.OpGet, 0, remote, nil, "")
	for i, want := range []protocol.Status{protocol.StatusOK, protocol.StatusOK, protocol.StatusKeyNotFound, protocol.StatusKeyNotFound} {
		if st, _ := legacy.recv(t); st != want {
			t.Fatalf("legacy request %d: status %#x, want %#x", i, st, want)
		}
	}
	// A vbucket-aware client asking a for a vbucket it does not hold.
	aware := dial(t, a.KVAddr())
	aware.send(protocol.OpHello, 0, "metrics-test", nil, "")
	aware.recv(t)
	aware.send(protocol.OpGet, remoteVB, remote, nil, "")
	if st, _ := aware.recv(t); st != protocol.StatusNotMyVBucket {
		t.Fatalf("aware GET of another node's vbucket: status %#x", st)
	}
	const requests = 6

	after := waitMetric(t, a.Node, "every request's latency", func(s scrape) bool {
		return s.value("vbcache_request_duration_seconds")-before.value("vbcache_request_duration_seconds") >= requests
	})
	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"vbcache_operations_total", []string{"opcode", "SET", "status", "success"}, 1},
		{"vbcache_operations_total", []string{"opcode", "GET", "status", "success"}, 1},
		{"vbcache_operations_total", []string{"opcode", "GET", "status", "key_not_found"}, 2}, // one forwarded
		{"vbcache_operations_total", []string{"opcode", "GET", "status", "not_my_vbucket"}, 1},
		{"vbcache_operations_total", []string{"opcode", "HELLO", "status", "success"}, 1},
		{"vbcache_hits_total", []string{"command", "get"}, 1},
		{"vbcache_misses_total", []string{"command", "get"}, 1}, // the forwarded miss is the owner's
		{"vbcache_forwarded_requests_total", nil, 1},
		{"vbcache_not_my_vbucket_total", nil, 1},
		{"vbcache_items", nil, 1},
		{"vbcache_items_stored_total", nil, 1},
		{"vbcache_connections_accepted_total", nil, 2},
	} {
		t.Run(fmt.Sprint(tt.name, tt.labels), func(t *testing.T) {
			if got := after.value(tt.name, tt.labels...) - before.value(tt.name, tt.labels...); got != tt.want {
				t.Errorf("moved by %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("owner and replica", func(t *testing.T) {
		s := scrapeMetrics(t, owner.Node)
		if got := s.value("vbcache_misses_total", "command", "get") - ownerBefore.value("vbcache_misses_total", "command", "get"); got != 1 {
			t.Errorf("the owner of the forwarded GET counted %v misses, want 1", got)
		}
		op := []string{"opcode", "SET_WITH_META", "status", "success"}
		s = waitMetric(t, replica.Node, "the SET's copy", func(s scrape) bool {
			return s.value("vbcache_operations_total", op...) > replicaBefore.value("vbcache_operations_total", op...)
		})
		if s.value("vbcache_items") == 0 {
			t.Error("the replica holds no item")
		}
	})
	t.Run("cluster", func(t *testing.T) {
		for _, n := range nodes {
			s := scrapeMetrics(t, n.Node)
			if got := s.value("vbcache_cluster_members", "state", "alive"); got != 3 {
				t.Errorf("%s sees %v members alive, want 3", n.name, got)
			}
			for _, state := range []string{"suspect", "dead", "left", "incompatible"} {
				if s["vbcache_cluster_members"] == nil || s.value("vbcache_cluster_members", "state", state) != 0 {
					t.Errorf("%s: members %s missing or not 0", n.name, state)
				}
			}
			if got := s.value("vbcache_map_rev"); got != float64(m.Rev) || got <= 0 {
				t.Errorf("%s: map rev %v, want %d", n.name, got, m.Rev)
			}
			active, replica := m.Counts()
			i := m.IndexOf(n.name)
			if s.value("vbcache_vbuckets", "role", "active") != float64(active[i]) ||
				s.value("vbcache_vbuckets", "role", "replica") != float64(replica[i]) {
				t.Errorf("%s: vbuckets %v active, %v replica; the map says %d, %d", n.name,
					s.value("vbcache_vbuckets", "role", "active"), s.value("vbcache_vbuckets", "role", "replica"), active[i], replica[i])
			}
			if got := s.value("vbcache_rebalance_vbuckets_moving"); got != 0 {
				t.Errorf("%s: %v vbuckets moving after convergence", n.name, got)
			}
		}
		// a sent the SET's copy to the replica: a series for it, acknowledged.
		peer := []string{"peer", replica.KVAddr()}
		if after["vbcache_replication_pending_copies"] == nil || !slices.ContainsFunc(after["vbcache_replication_pending_copies"].Metric,
			func(m *dto.Metric) bool { return hasLabels(m, peer) }) {
			t.Errorf("no replication lag series for %s", replica.KVAddr())
		}
		if lag := after.value("vbcache_replication_lag_seconds", peer...); lag != 0 {
			t.Errorf("replication lag towards %s is %vs with every copy acknowledged", replica.KVAddr(), lag)
		}
		for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", "vbcache_copy_holds_total", "vbcache_copy_holds_expired_total"} {
			if after[name] == nil {
				t.Errorf("%s missing", name)
			}
		}
	})
}

// TestMetricsSingleNode: a node without a cluster serves /metrics too,
// without the cluster metrics.
func TestMetricsSingleNode(t *testing.T) {
	n, err := New(Config{Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	c := dial(t, n.KVAddr())
	c.send(protocol.OpSetQ, 0, "k", make([]byte, 8), "v")
	c.send(protocol.OpGetQ, 0, "k", nil, "")
	c.send(protocol.OpGetQ, 0, "missing", nil, "")
	c.send(protocol.OpNoop, 0, "", nil, "")
	for _, want := range []protocol.Opcode{protocol.OpGetQ, protocol.OpNoop} {
		if _, resp := c.recv(t); resp.Opcode != want {
			t.Fatalf("got %s, want %s", resp.Opcode, want)
		}
	}
	s := waitMetric(t, n, "4 requests' latency", func(s scrape) bool { return s.value("vbcache_request_duration_seconds") == 4 })
	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"vbcache_operations_total", []string{"opcode", "SET", "status", "success"}, 1},
		{"vbcache_operations_total", []string{"opcode", "GET", "status", "success"}, 1},
		{"vbcache_operations_total", []string{"opcode", "GET", "status", "key_not_found"}, 1},
		{"vbcache_operations_total", []string{"opcode", "NOOP", "status", "success"}, 1},
		{"vbcache_hits_total", []string{"command", "get"}, 1},
		{"vbcache_misses_total", []string{"command", "get"}, 1},
		{"vbcache_items", nil, 1},
		{"vbcache_connections", nil, 1},
		{"vbcache_memory_limit_bytes", nil, 64 << 20},
	} {
		if got := s.value(tt.name, tt.labels...); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	for _, name := range []string{"vbcache_map_rev", "vbcache_cluster_members", "vbcache_rebalance_streams", "vbcache_replication_lag_seconds"} {
		if s[name] != nil {
			t.Errorf("single node exports %s", name)
		}
	}
	if s["go_goroutines"] == nil {
		t.Error("go_goroutines missing")
	}
}
