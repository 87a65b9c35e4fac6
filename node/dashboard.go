package node

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"vbcache/cluster"
	"vbcache/server"
)

// The dashboard is one page, dashboard.html: plain HTML, CSS and
// JavaScript, no build step and nothing fetched from elsewhere. It polls
// GET /api/dashboard about once a second; that endpoint answers with this
// node's view of the cluster (what /cluster shows) and every member's
// figures, which this node gathers from each member's GET /api/stats, so
// the browser talks to one origin only.

//go:embed dashboard.html
var dashboardPage []byte

const (
	// statsTimeout bounds the request to one member for its figures; a
	// member that has not answered by then is shown unreachable.
	statsTimeout = 800 * time.Millisecond
	// maxStatsBody is the most of a member's /api/stats answer read.
	maxStatsBody = 64 << 10
	// dashboardCSP keeps the page to itself: its own inline script and
	// style, and requests to this origin only.
	dashboardCSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; " +
		"connect-src 'self'; img-src data:"
)

// nodeStats is GET /api/stats: one node's figures at one instant.
type nodeStats struct {
	Node   string `json:"node"`
	TimeMS int64  `json:"time_ms"` // the node's clock, Unix milliseconds
	server.Totals
	Progress server.Progress `json:"progress"`
}

// memberStats is one member's entry in GET /api/dashboard: its figures, or
// why there are none.
type memberStats struct {
	Stats *nodeStats `json:"stats,omitempty"`
	Error string     `json:"error,omitempty"`
}

// dashboard is GET /api/dashboard.
type dashboard struct {
	Node    string `json:"node"` // the node that answered
	TimeMS  int64  `json:"time_ms"`
	Cluster struct {
		cluster.Status
		Progress server.Progress `json:"progress"`
	} `json:"cluster"`
	Stats map[string]memberStats `json:"stats"` // by member name
}

// handleDashboard adds the dashboard's routes to mux:
//
//	/               the page
//	/api/stats      this node's figures (nodeStats)
//	/api/dashboard  the cluster and every member's figures (dashboard)
func (n *Node) handleDashboard(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Security-Policy", dashboardCSP)
		w.Write(dashboardPage)
	})
	mux.HandleFunc("GET /api/stats", func(w http.ResponseWriter, r *http.Request) {
		writeAPI(w, n.localStats(n.name()))
	})
	mux.HandleFunc("GET /api/dashboard", func(w http.ResponseWriter, r *http.Request) {
		var d dashboard
		d.Cluster.Status, d.Cluster.Progress = n.status(), n.srv.Progress()
		d.Node = d.Cluster.Node
		d.Stats = n.gatherStats(r.Context(), d.Cluster.Status)
		d.TimeMS = time.Now().UnixMilli()
		writeAPI(w, d)
	})
}

// name is this node's name in /cluster: its cluster name, or "self".
func (n *Node) name() string {
	if n.cl != nil {
		return n.cl.Name()
	}
	return "self"
}

func (n *Node) localStats(name string) nodeStats {
	return nodeStats{
		Node: name, TimeMS: time.Now().UnixMilli(), Totals: n.srv.Totals(), Progress: n.srv.Progress(),
	}
}

// gatherStats returns every member's figures: this node's own, and those
// of the other members that may be up, asked for all at once. It blocks
// for at most statsTimeout.
func (n *Node) gatherStats(ctx context.Context, st cluster.Status) map[string]memberStats {
	ctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	got := make([]memberStats, len(st.Members)) // each goroutine writes its own entry
	var wg sync.WaitGroup
	for i, m := range st.Members {
		switch {
		case m.Name == st.Node:
			s := n.localStats(m.Name)
			got[i].Stats = &s
		case m.State == "dead" || m.State == "left" || m.State == "incompatible":
			got[i].Error = "not asked: the member is " + m.State
		case m.HTTP == "":
			got[i].Error = "not asked: the member serves no HTTP (no -http)"
		default:
			wg.Go(func() {
				s, err := n.fetchStats(ctx, m.Name, m.HTTP)
				if err != nil {
					got[i].Error = err.Error()
				} else {
					got[i].Stats = s
				}
			})
		}
	}
	wg.Wait()
	out := make(map[string]memberStats, len(st.Members))
	for i, m := range st.Members {
		out[m.Name] = got[i]
	}
	return out
}

// fetchStats asks the member name at addr for its figures.
func (n *Node) fetchStats(ctx context.Context, name, addr string) (*nodeStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/api/stats", nil)
	if err != nil {
		return nil, err
	}
	resp, err := n.peerHTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatsBody))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /api/stats from %s: %s", addr, resp.Status)
	}
	var s nodeStats
	if err := json.Unmarshal(body, &s); err != nil {
		return nil, fmt.Errorf("GET /api/stats from %s: %w", addr, err)
	}
	if s.Node != name {
		return nil, fmt.Errorf("GET /api/stats from %s: answered by %q, not %q", addr, s.Node, name)
	}
	return &s, nil
}

// newPeerHTTP returns the client the dashboard asks other members with:
// no proxy, short timeouts, a few idle connections kept per member.
func newPeerHTTP() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:           (&net.Dialer{Timeout: statsTimeout}).DialContext,
		ResponseHeaderTimeout: statsTimeout,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       time.Minute,
	}}
}

// writeAPI writes v as compact JSON, not to be cached: what the dashboard
// polls.
func writeAPI(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v)
}
