package server

import (
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"vbcache/protocol"
)

// counter indexes a connection's request counters.
type counter int

const (
	cCmdGet counter = iota
	cGetHits
	cGetMisses
	cCmdSet
	cCmdFlush
	cCmdTouch
	cTouchHits
	cTouchMisses
	cDeleteHits
	cDeleteMisses
	cIncrHits
	cIncrMisses
	cDecrHits
	cDecrMisses
	cCasHits
	cCasMisses
	cCasBadval
	cAuthCmds
	cAuthErrors
	cBytesRead
	cBytesWritten
	cForwarded
	cNotMyVBucket
	numCounters
)

// counterNames are the memcached STAT names of the counters, in order.
var counterNames = [numCounters]string{
	"cmd_get", "get_hits", "get_misses", "cmd_set", "cmd_flush", "cmd_touch", "touch_hits",
	"touch_misses", "delete_hits", "delete_misses", "incr_hits", "incr_misses", "decr_hits",
	"decr_misses", "cas_hits", "cas_misses", "cas_badval", "auth_cmds", "auth_errors",
	"bytes_read", "bytes_written", "forwarded", "not_my_vbucket",
}

// counters are kept per connection, each written only by its connection's
// goroutine, so the request path touches no shared cache line; STAT sums
// them.
type counters [numCounters]atomic.Uint64

func (c *counters) addFrom(o *counters) {
	for i := range c {
		c[i].Add(o[i].Load())
	}
}

// stat serves STAT: the general group for an empty key, "settings", and
// "reset"; each statistic is one response and an empty-keyed response ends
// the series.
func (c *conn) stat(req *protocol.Request) {
	switch string(req.Key) {
	case "":
		c.generalStats(req)
	case "settings":
		c.settingsStats(req)
	case "reset":
		c.srv.resetStats()
	default:
		c.fail(req, protocol.StatusKeyNotFound)
		return
	}
	c.appendStat(req, "", nil)
}

func (c *conn) generalStats(req *protocol.Request) {
	s := c.srv
	now := time.Now()
	user, system := processCPU()
	sum := s.statSnapshot()
	st := s.cfg.Store.Stats()

	c.statUint(req, "pid", uint64(os.Getpid()))
	c.statUint(req, "uptime", uint64(now.Sub(s.start)/time.Second))
	c.statUint(req, "time", uint64(now.Unix()))
	c.appendStat(req, "version", []byte(s.cfg.Version))
	c.statUint(req, "pointer_size", 64)
	c.appendStat(req, "rusage_user", seconds(user))
	c.appendStat(req, "rusage_system", seconds(system))
	c.statUint(req, "max_connections", uint64(s.cfg.MaxConns))
	c.statUint(req, "curr_connections", uint64(s.currConns.Load()))
	c.statUint(req, "total_connections", s.totalConns.Load())
	c.statUint(req, "rejected_connections", s.rejectedConns.Load())
	c.statUint(req, "idle_kicks", s.idleKicks.Load())
	for i, name := range counterNames {
		c.statUint(req, name, sum[i])
	}
	c.statUint(req, "limit_maxbytes", st.LimitMaxBytes)
	c.statUint(req, "threads", uint64(numGoroutinesHint()))
	c.statUint(req, "bytes", st.Bytes)
	c.statUint(req, "curr_items", st.CurrItems)
	c.statUint(req, "total_items", st.TotalItems)
	c.statUint(req, "expired_unfetched", st.ExpiredUnfetched)
	c.statUint(req, "evicted_unfetched", st.EvictedUnfetched)
	c.statUint(req, "evictions", st.Evictions)
	c.statUint(req, "reclaimed", st.Reclaimed)
	if s.cfg.Cluster != nil {
		p := s.Progress()
		c.statUint(req, "cluster_rev", uint64(max(p.Rev, 0)))
		c.statUint(req, "vbuckets_active", uint64(p.VBucketsActive))
		c.statUint(req, "vbuckets_replica", uint64(p.VBucketsReplica))
		c.statUint(req, "vbuckets_moving", uint64(p.VBucketsMoving))
		c.statUint(req, "rebalance_items_sent", p.BackfillItems)
		c.statUint(req, "rebalance_bytes_sent", p.BackfillBytes)
		c.statUint(req, "replication_errors", p.ReplicationErrs)
		c.statUint(req, "copy_holds", p.CopyHolds)
		c.statUint(req, "copy_holds_expired", p.CopyHoldsExpired)
	}
}

func (c *conn) settingsStats(req *protocol.Request) {
	s := c.srv
	c.statUint(req, "maxbytes", s.cfg.Store.Stats().LimitMaxBytes)
	c.statUint(req, "maxconns", uint64(s.cfg.MaxConns))
	c.statUint(req, "idle_timeout", uint64(s.cfg.IdleTimeout/time.Second))
	c.appendStat(req, "evictions", []byte("on"))
	c.appendStat(req, "cas_enabled", []byte("yes"))
	c.statUint(req, "item_size_max", uint64(s.cfg.MaxItemSize))
	c.appendStat(req, "binding_protocol", []byte("binary"))
	c.appendStat(req, "auth_enabled_sasl", []byte(yesNo(len(s.cfg.Users) > 0)))
	c.statUint(req, "num_threads", uint64(numGoroutinesHint()))
}

func (c *conn) statUint(req *protocol.Request, name string, v uint64) {
	var b [20]byte
	c.appendStat(req, name, strconv.AppendUint(b[:0], v, 10))
}

func (c *conn) appendStat(req *protocol.Request, name string, value []byte) {
	c.wbuf = protocol.AppendHeader(c.wbuf, protocol.MagicResponse, protocol.OpStat, len(name), 0, 0, 0,
		len(name)+len(value), req.Opaque, 0)
	c.wbuf = append(c.wbuf, name...)
	c.wbuf = append(c.wbuf, value...)
}

// seconds formats a CPU time as memcached formats rusage: seconds, a
// point and six digits of microseconds.
func seconds(d time.Duration) []byte {
	us := d.Microseconds()
	b := strconv.AppendInt(nil, us/1e6, 10)
	b = append(b, '.')
	frac := strconv.AppendInt(nil, us%1e6+1e6, 10)
	return append(b, frac[1:]...)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
