package server

import "time"

// Totals are a node's request, item and connection figures in one value:
// what the HTTP dashboard polls (GET /api/stats). The request counters are
// STAT's, summed over every connection since the node started or STAT
// reset, so a reader computes rates from two samples.
type Totals struct {
	UptimeSeconds int64  `json:"uptime_s"`
	CmdGet        uint64 `json:"cmd_get"`
	GetHits       uint64 `json:"get_hits"`
	GetMisses     uint64 `json:"get_misses"`
	CmdSet        uint64 `json:"cmd_set"`
	// Ops counts every data command this node served itself: gets, sets
	// (CAS included), touches, deletes, increments, decrements and
	// flushes. A request it forwarded counts on the node that served it,
	// and in Forwarded here.
	Ops             uint64 `json:"ops"`
	Forwarded       uint64 `json:"forwarded"`
	NotMyVBucket    uint64 `json:"not_my_vbucket"`
	CurrItems       uint64 `json:"curr_items"`
	Bytes           uint64 `json:"bytes"`
	LimitMaxBytes   uint64 `json:"limit_maxbytes"`
	Evictions       uint64 `json:"evictions"`
	CurrConnections int64  `json:"curr_connections"`
}

// opCounters are the counters whose sum is Totals.Ops: one per command
// served, whatever its outcome.
var opCounters = [...]counter{
	cCmdGet, cCmdSet, cCmdTouch, cCmdFlush, cDeleteHits, cDeleteMisses,
	cIncrHits, cIncrMisses, cDecrHits, cDecrMisses,
}

// Totals returns a snapshot of the node's figures. It is safe for
// concurrent use and blocks only on the server's and the store's locks.
func (s *Server) Totals() Totals {
	sum := s.snapshot()
	st := s.cfg.Store.Stats()
	t := Totals{
		UptimeSeconds: int64(time.Since(s.start) / time.Second),
		CmdGet:        sum[cCmdGet], GetHits: sum[cGetHits], GetMisses: sum[cGetMisses],
		CmdSet: sum[cCmdSet], Forwarded: sum[cForwarded], NotMyVBucket: sum[cNotMyVBucket],
		CurrItems: st.CurrItems, Bytes: st.Bytes, LimitMaxBytes: st.LimitMaxBytes,
		Evictions: st.Evictions, CurrConnections: s.currConns.Load(),
	}
	for _, c := range opCounters {
		t.Ops += sum[c]
	}
	return t
}
