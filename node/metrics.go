package node

import (
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsHandler serves /metrics in the Prometheus text format from a
// registry of this node's own: several nodes may run in one process. It
// holds the Go runtime's and the process's metrics and the node's, which
// the collector below reads from the server, the store and the cluster
// when /metrics is scraped, so requests pay nothing for them.
func (n *Node) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newCollector(n),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	})
}

// collector is the node's prometheus.Collector. README's "Metrics" section
// lists what it exports.
type collector struct {
	n     *Node
	descs []*prometheus.Desc

	ops, latency, hits, misses, casMismatches, readBytes, writtenBytes *prometheus.Desc
	forwarded, notMyVBucket, authCmds, authErrors                      *prometheus.Desc
	conns, connsAccepted, connsRejected, connsMax                      *prometheus.Desc
	items, itemsStored, itemBytes, memoryLimit                         *prometheus.Desc
	evictions, evictedUnfetched, expiredUnfetched, reclaimed           *prometheus.Desc
	mapRev, vbuckets, moving, streams, backfillItems, backfillBytes    *prometheus.Desc
	replErrors, replPending, replLag, members                          *prometheus.Desc
	copyHolds, copyHoldsExpired                                        *prometheus.Desc
}

func newCollector(n *Node) *collector {
	c := &collector{n: n}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		desc := prometheus.NewDesc("vbcache_"+name, help, labels, nil)
		c.descs = append(c.descs, desc)
		return desc
	}
	c.ops = d("operations_total", "Requests handled, by opcode (quiet forms under their loud name) and response status. "+
		"A quiet request that answers nothing counts as success, or key_not_found for the GETQ family; "+
		"forwarded and replicated requests count once their response is known.", "opcode", "status")
	c.latency = d("request_duration_seconds", "Request latency: from the read that delivered a request to the end of the "+
		"write of its response, shared by the requests read together; includes forwarding and sync replication.")
	c.hits = d("hits_total", "Requests that found their key, by command: get (GET, GETK), touch (TOUCH, GAT, GATK), "+
		"delete, incr, decr, cas (a mutation whose CAS matched).", "command")
	c.misses = d("misses_total", "Requests that did not find their key, by command, as for vbcache_hits_total.", "command")
	c.casMismatches = d("cas_mismatches_total", "Mutations whose CAS did not match the item's (memcached's cas_badval).")
	c.readBytes = d("read_bytes_total", "Bytes read from the connections this node accepted (clients, other nodes).")
	c.writtenBytes = d("written_bytes_total", "Bytes written to the connections this node accepted.")
	c.forwarded = d("forwarded_requests_total", "Requests of legacy clients forwarded to the node holding their vbucket.")
	c.notMyVBucket = d("not_my_vbucket_total", "NOT_MY_VBUCKET replies to vbucket-aware clients whose request's vbucket "+
		"this node does not hold active.")
	c.authCmds = d("auth_commands_total", "SASL authentication attempts.")
	c.authErrors = d("auth_errors_total", "Failed SASL authentication attempts.")
	c.conns = d("connections", "Connections this node accepted that are open now, from clients and other nodes.")
	c.connsAccepted = d("connections_accepted_total", "Connections accepted, including those closed at once at the limit.")
	c.connsRejected = d("connections_rejected_total", "Connections closed at once because -max-conns were open.")
	c.connsMax = d("connections_max", "Most connections served at once (-max-conns).")
	c.items = d("items", "Items held, including expired ones not yet reclaimed.")
	c.itemsStored = d("items_stored_total", "Items stored.")
	c.itemBytes = d("item_bytes", "Bytes the items take in the store (32 + key + value, rounded up to 8, each).")
	c.memoryLimit = d("memory_limit_bytes", "Most item bytes held before evicting (-memory-limit).")
	c.evictions = d("evictions_total", "Live items evicted to make room.")
	c.evictedUnfetched = d("evicted_unfetched_total", "Evicted items that were never read.")
	c.expiredUnfetched = d("expired_unfetched_total", "Expired items reclaimed that were never read.")
	c.reclaimed = d("reclaimed_total", "Expired or flushed items whose memory was reclaimed.")
	c.mapRev = d("map_rev", "Rev of the vbucket map this node routes by (cluster mode).")
	c.vbuckets = d("vbuckets", "vbuckets this node holds, by role: active or replica (cluster mode).", "role")
	c.moving = d("rebalance_vbuckets_moving", "vbuckets the current map moves, cluster-wide: 0 when no rebalance is under way.")
	c.streams = d("rebalance_streams", "Streams the current map asks this node to send, by state: backfilled, or pending "+
		"(still sending what the vbucket held). The node reports ready for a rebalance once none is pending.", "state")
	c.backfillItems = d("backfill_items_total", "Items this node has sent in backfills (rebalance moves, replica rebuilds).")
	c.backfillBytes = d("backfill_bytes_total", "Bytes of the items this node has sent in backfills.")
	c.replErrors = d("replication_errors_total", "Copies of writes that a replica failed or did not acknowledge in time.")
	c.copyHolds = d("copy_holds_total", "Writes of copies held for clients expected to write again (-copy-hold).")
	c.copyHoldsExpired = d("copy_holds_expired_total", "Holds of copies that ran out with clients still expected.")
	c.replPending = d("replication_pending_copies", "Replication lag in messages: copies of writes, backfill items and "+
		"stream resets sent or queued to a peer (by memcached address) and not yet acknowledged.", "peer")
	c.replLag = d("replication_lag_seconds", "Replication lag in time: how long the oldest copy not yet acknowledged by "+
		"a peer has waited since it was queued; 0 when none is.", "peer")
	c.members = d("cluster_members", "Cluster members as this node's gossip sees them, by state: alive, suspect, "+
		"dead, left or incompatible (refused: another vbucket count).", "state")
	return c
}

// Describe sends every descriptor Collect may use.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect reads the node's counters. It is safe for concurrent use.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}

	m := c.n.srv.Metrics()
	for _, oc := range m.Ops {
		counter(c.ops, oc.Count, oc.Opcode, oc.Status)
	}
	h := m.Latency
	buckets := make(map[float64]uint64, len(h.Bounds))
	var cum uint64
	for i, bound := range h.Bounds {
		cum += h.Counts[i]
		buckets[bound] = cum
	}
	ch <- prometheus.MustNewConstHistogram(c.latency, h.Count, h.Sum, buckets)
	for _, hm := range []struct {
		command   string
		hit, miss uint64
	}{
		{"get", m.GetHits, m.GetMisses}, {"touch", m.TouchHits, m.TouchMisses},
		{"delete", m.DeleteHits, m.DeleteMisses}, {"incr", m.IncrHits, m.IncrMisses},
		{"decr", m.DecrHits, m.DecrMisses}, {"cas", m.CasHits, m.CasMisses},
	} {
		counter(c.hits, hm.hit, hm.command)
		counter(c.misses, hm.miss, hm.command)
	}
	counter(c.casMismatches, m.CasBadval)
	counter(c.readBytes, m.BytesRead)
	counter(c.writtenBytes, m.BytesWritten)
	counter(c.forwarded, m.Forwarded)
	counter(c.notMyVBucket, m.NotMyVBucket)
	counter(c.authCmds, m.AuthCmds)
	counter(c.authErrors, m.AuthErrors)
	gauge(c.conns, float64(m.CurrConns))
	counter(c.connsAccepted, m.TotalConns)
	counter(c.connsRejected, m.RejectedConns)
	gauge(c.connsMax, float64(m.MaxConns))

	st := c.n.store.Stats()
	gauge(c.items, float64(st.CurrItems))
	counter(c.itemsStored, st.TotalItems)
	gauge(c.itemBytes, float64(st.Bytes))
	gauge(c.memoryLimit, float64(st.LimitMaxBytes))
	counter(c.evictions, st.Evictions)
	counter(c.evictedUnfetched, st.EvictedUnfetched)
	counter(c.expiredUnfetched, st.ExpiredUnfetched)
	counter(c.reclaimed, st.Reclaimed)

	if c.n.cl == nil {
		return // single node: no cluster metrics
	}
	p := c.n.srv.Progress()
	gauge(c.mapRev, float64(p.Rev))
	gauge(c.vbuckets, float64(p.VBucketsActive), "active")
	gauge(c.vbuckets, float64(p.VBucketsReplica), "replica")
	gauge(c.moving, float64(p.VBucketsMoving))
	gauge(c.streams, float64(p.StreamsBackfilled), "backfilled")
	gauge(c.streams, float64(p.Streams-p.StreamsBackfilled), "pending")
	counter(c.backfillItems, p.BackfillItems)
	counter(c.backfillBytes, p.BackfillBytes)
	counter(c.replErrors, p.ReplicationErrs)
	counter(c.copyHolds, p.CopyHolds)
	counter(c.copyHoldsExpired, p.CopyHoldsExpired)
	for _, l := range p.Peers {
		gauge(c.replPending, float64(l.Copies), l.Peer)
		gauge(c.replLag, l.Oldest.Seconds(), l.Peer)
	}
	byState := map[string]int{}
	for _, mb := range c.n.cl.Status().Members {
		byState[mb.State]++
	}
	// Every state cluster.MemberStatus reports, even with no member in it.
	for _, state := range []string{"alive", "suspect", "dead", "left", "incompatible"} {
		gauge(c.members, float64(byState[state]), state)
	}
}
