package node

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"vbcache/protocol"
)

// dashboardAnswer is what the tests read of GET /api/dashboard.
type dashboardAnswer struct {
	Node    string `json:"node"`
	Cluster struct {
		Rev     int64 `json:"rev"`
		Members []struct {
			Name  string `json:"name"`
			State string `json:"state"`
			Ready int64  `json:"ready"`
		} `json:"members"`
	} `json:"cluster"`
	Stats map[string]struct {
		Stats *nodeStats `json:"stats"`
		Error string     `json:"error"`
	} `json:"stats"`
}

func TestDashboardEndpoints(t *testing.T) {
	nodes := startCluster(t, 3)
	m := waitConverged(t, nodes)
	c := dial(t, nodes[0].KVAddr()) // a legacy client: node0 forwards
	c.send(protocol.OpSet, 0, "dash", make([]byte, 8), "v")
	c.send(protocol.OpGet, 0, "dash", nil, "")
	for range 2 {
		if st, _ := c.recv(t); st != protocol.StatusOK {
			t.Fatalf("status 0x%02x", st)
		}
	}

	t.Run("page", func(t *testing.T) {
		resp, err := httpClient.Get("http://" + nodes[1].HTTPAddr() + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
			!strings.Contains(resp.Header.Get("Content-Security-Policy"), "connect-src 'self'") {
			t.Fatalf("GET /: %s, headers %v", resp.Status, resp.Header)
		}
		if body := httpGet(t, "http://"+nodes[1].HTTPAddr()+"/"); !strings.Contains(body, `id="vbgrid"`) {
			t.Fatalf("GET / is not the dashboard: %.200s", body)
		}
		if resp, err := httpClient.Get("http://" + nodes[1].HTTPAddr() + "/nosuchpage"); err != nil || resp.StatusCode != http.StatusNotFound {
			t.Fatalf("GET /nosuchpage: %v %v; want 404", resp.Status, err)
		}
	})

	t.Run("stats", func(t *testing.T) {
		var s nodeStats
		getJSON(t, "http://"+nodes[2].HTTPAddr()+"/api/stats", &s)
		if s.Node != "node2" || s.TimeMS == 0 || s.LimitMaxBytes == 0 || s.Progress.Rev != m.Rev {
			t.Fatalf("/api/stats of node2: %+v", s)
		}
	})

	t.Run("dashboard", func(t *testing.T) {
		var d dashboardAnswer
		getJSON(t, "http://"+nodes[0].HTTPAddr()+"/api/dashboard", &d)
		if d.Node != "node0" || d.Cluster.Rev != m.Rev || len(d.Cluster.Members) != 3 || len(d.Stats) != 3 {
			t.Fatalf("node %s rev %d, %d members, %d stats", d.Node, d.Cluster.Rev, len(d.Cluster.Members), len(d.Stats))
		}
		var ops uint64
		for _, n := range nodes {
			e := d.Stats[n.name]
			if e.Stats == nil || e.Stats.Node != n.name || e.Error != "" {
				t.Fatalf("stats of %s: %+v", n.name, e)
			}
			ops += e.Stats.Ops
		}
		if ops < 2 {
			t.Errorf("the nodes served %d ops in all; the test sent 2", ops)
		}
	})

	t.Run("a member down", func(t *testing.T) {
		nodes[2].Close()
		deadline := time.Now().Add(convergeTimeout)
		for {
			var d dashboardAnswer
			start := time.Now()
			getJSON(t, "http://"+nodes[0].HTTPAddr()+"/api/dashboard", &d)
			if took := time.Since(start); took > statsTimeout+time.Second {
				t.Fatalf("/api/dashboard took %v with a member down", took)
			}
			e := d.Stats["node2"]
			if e.Stats != nil {
				t.Fatalf("stats of a closed node: %+v", e.Stats)
			}
			state := ""
			for _, mb := range d.Cluster.Members {
				if mb.Name == "node2" {
					state = mb.State
				}
			}
			if state == "dead" && e.Error == "not asked: the member is dead" {
				return
			}
			if e.Error == "" {
				t.Fatalf("node2 (%s): no stats and no error", state)
			}
			if time.Now().After(deadline) {
				t.Fatalf("node2 still %s after %v: %s", state, convergeTimeout, e.Error)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

func TestDashboardSingleNode(t *testing.T) {
	n, err := New(Config{Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	var d dashboardAnswer
	getJSON(t, "http://"+n.HTTPAddr()+"/api/dashboard", &d)
	if d.Node != "self" || len(d.Cluster.Members) != 1 || d.Cluster.Members[0].Name != "self" ||
		d.Cluster.Members[0].Ready != d.Cluster.Rev || d.Stats["self"].Stats == nil {
		t.Fatalf("single node's dashboard: %+v", d)
	}
}
