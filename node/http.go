package node

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"net/http/pprof"

	"vbcache/cluster"
	"vbcache/server"
)

// handler serves the node's HTTP endpoints:
//
//	/                               the dashboard (dashboard.go), with
//	/api/stats, /api/dashboard      the figures it polls
//	/healthz                        200 once serving, else 503
//	/cluster                        members, rev, vbuckets per node, the map
//	/metrics                        Prometheus metrics (metrics.go)
//	/pools, /pools/default,
//	/pools/default/buckets,
//	/pools/default/buckets/default  what go-couchbase reads to find the map
//	/debug/pprof/                   Go's profiler (CPU, heap, goroutines)
//
// None changes state. The profiler asks for HTTP basic auth with one of
// Config.Users when there are any (see requireUser); it has no cmdline
// endpoint, since the command line may carry secrets such as the gossip
// key.
func (n *Node) handler() http.Handler {
	mux := http.NewServeMux()
	n.handleDashboard(mux)
	mux.Handle("/debug/pprof/", n.requireUser(http.HandlerFunc(pprof.Index)))
	mux.Handle("/debug/pprof/profile", n.requireUser(http.HandlerFunc(pprof.Profile)))
	mux.Handle("/debug/pprof/symbol", n.requireUser(http.HandlerFunc(pprof.Symbol)))
	mux.Handle("/debug/pprof/trace", n.requireUser(http.HandlerFunc(pprof.Trace)))
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
			Rev: m.Rev, Ready: m.Rev, ActiveVBuckets: active[0], ReplicaVBuckets: replica[0],
		}},
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	enc.Encode(v)
}

// requireUser wraps h to ask for HTTP basic auth with a user and password
// from Config.Users, if there are any; without users it returns h.
func (n *Node) requireUser(h http.Handler) http.Handler {
	users := n.cfg.Users
	if len(users) == 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		want, known := users[user]
		if !ok || !known || subtle.ConstantTimeCompare([]byte(pass), []byte(want)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="vbcache", charset="UTF-8"`)
			http.Error(w, "authentication required: a user and password from the node's auth file", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}
