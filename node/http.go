package node

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"

	"vbcache/cluster"
	"vbcache/server"
)

// handler serves the node's HTTP endpoints:
//
//	/healthz                        200 once serving, else 503
//	/cluster                        members, rev, vbuckets per node, the map
//	/metrics                        Prometheus metrics (metrics.go)
//	/pools, /pools/default,
//	/pools/default/buckets,
//	/pools/default/buckets/default  what go-couchbase reads to find the map
//	/debug/pprof/                   Go's profiler (CPU, heap, goroutines)
func (n *Node) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("GET /metrics", n.metricsHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if n.cl != nil && !n.cl.Serving() {
			http.Error(w, "no cluster map yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /cluster", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, struct {
			cluster.Status
			Progress server.Progress `json:"progress"`
		}{n.status(), n.srv.Progress()})
	})
	mux.HandleFunc("GET /pools", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{
			"isAdminCreds": true, "implementationVersion": n.cfg.Version,
			"pools": []map[string]string{{"name": "default", "uri": "/pools/default", "streamingUri": "/poolsStreaming/default"}},
		})
	})
	mux.HandleFunc("GET /pools/default", func(w http.ResponseWriter, r *http.Request) {
		b, ok := n.bucket(w)
		if !ok {
			return
		}
		writeJSON(w, map[string]any{
			"name": "default", "nodes": b["nodes"],
			"buckets": map[string]string{"uri": "/pools/default/buckets"},
		})
	})
	mux.HandleFunc("GET /pools/default/buckets", func(w http.ResponseWriter, r *http.Request) {
		if b, ok := n.bucket(w); ok {
			writeJSON(w, []any{b})
		}
	})
	mux.HandleFunc("GET /pools/default/buckets/default", func(w http.ResponseWriter, r *http.Request) {
		if b, ok := n.bucket(w); ok {
			writeJSON(w, b)
		}
	})
	return mux
}

// bucket returns the bucket config as a JSON object, or answers 503.
func (n *Node) bucket(w http.ResponseWriter) (map[string]any, bool) {
	var b map[string]any
	config := n.srv.ClientConfig()
	if config == nil || json.Unmarshal(config, &b) != nil {
		http.Error(w, "no cluster map yet", http.StatusServiceUnavailable)
		return nil, false
	}
	return b, true
}

// status is /cluster's answer; a single node reports itself alone.
func (n *Node) status() cluster.Status {
	if n.cl != nil {
		return n.cl.Status()
	}
	m := n.srv.Map()
	active, replica := m.Counts()
	return cluster.Status{
		Node: "self", Rev: m.Rev, VBuckets: m.NumVBuckets(), Coordinator: "self", Map: m,
		Members: []cluster.MemberStatus{{
			Name: "self", State: "alive", KV: n.kvAddr, HTTP: n.HTTPAddr(),
			Rev: m.Rev, ActiveVBuckets: active[0], ReplicaVBuckets: replica[0],
		}},
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	enc.Encode(v)
}
