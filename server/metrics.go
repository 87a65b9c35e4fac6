package server

import (
	"encoding/binary"
	"math/bits"
	"slices"
	"sync/atomic"
	"time"

	"vbcache/protocol"
)

// Request metrics: every request is counted by opcode and response status,
// and its latency goes into a histogram, for /metrics.
//
// The counts are kept per serving goroutine rather than per connection: an
// event loop keeps one set for all the connections it serves, and a
// connection with a goroutine of its own (handed off, or not on Linux) gets
// a set of its own. Only that goroutine writes a set; Metrics sums the sets.
// A connection's counts stay where they were made when it moves from a loop
// to its own goroutine.
//
// The request path does nothing for them. A response frame names its
// request's opcode and status, so just before a batch's responses are
// written a connection walks them and tallies the requests in plain memory
// (countOutput, opTally); once they are written it adds the tally to the
// shared counters (endBatch), with the batch's latency: one clock read
// after the read that delivered it and one after that write. Only a quiet
// request that answers nothing is counted as it is handled (handle), and a
// response another node produces as its slot is filled (assemble).

// opRows are the opcodes counted apart, one row each of reqStats.ops: the
// loud forms of every opcode protocol knows. A quiet request counts in its
// loud form's row; the row after these is for unknown opcodes.
var opRows = [...]protocol.Opcode{
	protocol.OpGet, protocol.OpGetK, protocol.OpGAT, protocol.OpGATK, protocol.OpSet,
	protocol.OpAdd, protocol.OpReplace, protocol.OpAppend, protocol.OpPrepend, protocol.OpDelete,
	protocol.OpIncrement, protocol.OpDecrement, protocol.OpTouch, protocol.OpFlush, protocol.OpNoop,
	protocol.OpVersion, protocol.OpQuit, protocol.OpStat, protocol.OpVerbosity, protocol.OpHello,
	protocol.OpSASLListMechs, protocol.OpSASLAuth, protocol.OpSASLStep, protocol.OpSelectBucket,
	protocol.OpGetErrorMap, protocol.OpGetClusterConfig, protocol.OpGetVBucket,
	protocol.OpSetVBucket, protocol.OpDelVBucket, protocol.OpSetWithMeta, protocol.OpDelWithMeta,
}

// statusCols are the response statuses counted apart, with their names in
// /metrics; the column after these is for any other status.
var statusCols = [...]statusName{
	{protocol.StatusOK, "success"},
	{protocol.StatusKeyNotFound, "key_not_found"},
	{protocol.StatusKeyExists, "key_exists"},
	{protocol.StatusValueTooLarge, "value_too_large"},
	{protocol.StatusInvalidArgs, "invalid_arguments"},
	{protocol.StatusNotStored, "not_stored"},
	{protocol.StatusNonNumeric, "non_numeric"},
	{protocol.StatusNotMyVBucket, "not_my_vbucket"},
	{protocol.StatusNoBucket, "no_bucket"},
	{protocol.StatusAuthError, "auth_error"},
	{protocol.StatusAuthContinue, "auth_continue"},
	{protocol.StatusUnknownCommand, "unknown_command"},
	{protocol.StatusOutOfMemory, "out_of_memory"},
	{protocol.StatusNotSupported, "not_supported"},
	{protocol.StatusInternalError, "internal_error"},
	{protocol.StatusBusy, "busy"},
	{protocol.StatusTempFailure, "temporary_failure"},
}

type statusName struct {
	st   protocol.Status
	name string
}

const (
	numOpRows     = len(opRows) + 1
	numStatusCols = len(statusCols) + 1
)

// opCells and statusCol place a request in reqStats.ops, whose cells are
// numbered row*numStatusCols + column. Lookup tables, written once as the
// package loads.
var (
	opCells   = opCellTable()
	statusCol = statusColTable()
)

// opCell gives an opcode the first cell of its row, and the cell a request
// with that opcode counts in when it answers nothing: success, or for the
// GETQ family key_not_found.
type opCell struct{ row, silent uint16 }

func opCellTable() (t [256]opCell) {
	notFound := slices.IndexFunc(statusCols[:], func(c statusName) bool { return c.st == protocol.StatusKeyNotFound })
	for op := range t {
		row := len(opRows)
		if o := protocol.Opcode(op); o.Known() {
			row = slices.Index(opRows[:], o.Loud())
		}
		t[op].row = uint16(row * numStatusCols)
		t[op].silent = t[op].row
		if isGet(protocol.Opcode(op)) {
			t[op].silent += uint16(notFound)
		}
	}
	return t
}

func statusColTable() (t [256]uint8) {
	for s := range t {
		t[s] = uint8(len(statusCols))
	}
	for i, c := range statusCols {
		t[c.st] = uint8(i)
	}
	return t
}

// isGet reports whether op reads an item: the GET and GAT families.
func isGet(op protocol.Opcode) bool {
	switch op.Loud() {
	case protocol.OpGet, protocol.OpGetK, protocol.OpGAT, protocol.OpGATK:
		return true
	}
	return false
}

// Latency histogram bounds: latencyMin doubled numLatencyBounds-1 times,
// 10 µs to 1.31 s.
const (
	latencyMin       = 10 * time.Microsecond
	numLatencyBounds = 18
)

// latencyBucket returns the index of the smallest bound d does not exceed,
// or numLatencyBounds if it exceeds them all.
func latencyBucket(d time.Duration) int {
	if d <= latencyMin {
		return 0
	}
	return min(bits.Len64(uint64((d-1)/latencyMin)), numLatencyBounds)
}

// reqStats are the request metrics one serving goroutine keeps; see the top
// of this file. Only that goroutine writes them, but for the batches of an
// event loop's parked connections, which end on peer readers (see
// eventLoop.park); Metrics reads them from others, hence atomic.
type reqStats struct {
	// ops counts requests by cell (see opCells).
	ops [numOpRows * numStatusCols]atomic.Uint64
	// latency counts requests by latencyBucket; latencyNanos sums their
	// latencies.
	latency      [numLatencyBounds + 1]atomic.Uint64
	latencyNanos atomic.Uint64
}

// addTo adds r's counts to sum.
func (r *reqStats) addTo(sum *reqTotals) {
	for i := range r.ops {
		sum.ops[i] += r.ops[i].Load()
	}
	for i := range r.latency {
		sum.latency[i] += r.latency[i].Load()
	}
	sum.latencyNanos += r.latencyNanos.Load()
}

// tallyCells is how many different (opcode, status) cells a tally holds
// besides its run before it must add them to the shared counters
// mid-batch.
const tallyCells = 8

// opTally counts the requests of the batch a connection is handling, in
// plain memory, for its serving goroutine to add to reqStats: a run of
// requests in the latest request's cell, and before it up to tallyCells
// other cells.
type opTally struct {
	last   uint16 // the run's cell
	run    uint32 // 0 once the batch is published
	used   int
	cells  [tallyCells]uint16
	counts [tallyCells]uint32
	// published counts the batch's requests published before it ended,
	// because the cells were full.
	published int
}

// countOutput counts the requests whose responses wbuf holds past what is
// counted, before they are written: each response frame is one request,
// but for STAT, whose requests end with a frame without a key. The frames
// carry the request's opcode and the status, so the request path pays
// nothing for these counts; countSilent counts the requests that answer
// nothing.
func (c *conn) countOutput() {
	b := c.wbuf[c.counted:]
	for len(b) >= protocol.HeaderLen {
		op := protocol.Opcode(b[1])
		if op != protocol.OpStat || b[2]|b[3] == 0 {
			c.countCell(opCells[op].row + statusColOf(b[6], b[7]))
		}
		b = b[min(protocol.HeaderLen+int(binary.BigEndian.Uint32(b[8:12])), len(b)):]
	}
	c.counted = len(c.wbuf)
}

// countSilent counts a request with opcode op that answered nothing: a
// quiet one that succeeded, or for the GETQ family missed.
func (c *conn) countSilent(op protocol.Opcode) {
	c.countCell(opCells[op].silent)
}

// countCell counts one request in cell.
func (c *conn) countCell(cell uint16) {
	if !c.tally.extend(cell) {
		c.newRun(cell)
	}
}

// extend counts a request in cell if cell is the run's, and reports
// whether it did: most batches are all one kind.
func (t *opTally) extend(cell uint16) bool {
	if cell != t.last {
		return false
	}
	t.run++
	return true
}

// statusColOf returns the column of the status whose bytes are hi, lo.
func statusColOf(hi, lo byte) uint16 {
	if hi != 0 {
		return uint16(len(statusCols)) // other
	}
	return uint16(statusCol[lo])
}

// newRun starts a run of requests in cell, keeping the one before in the
// tally's cells; when they are full it first publishes them.
func (c *conn) newRun(cell uint16) {
	t := &c.tally
	if t.run > 0 {
		i := slices.Index(t.cells[:t.used], t.last)
		if i < 0 {
			if t.used == tallyCells {
				t.published += c.publishOps(false)
			}
			i = t.used
			t.cells[i], t.counts[i] = t.last, 0
			t.used++
		}
		t.counts[i] += t.run
	}
	t.last, t.run = cell, 1
}

// publishOps adds the tallied counts to the serving goroutine's counters,
// with the run's if run is set, and returns how many requests they were.
func (c *conn) publishOps(run bool) (n int) {
	t := &c.tally
	for i := range t.used {
		c.req.ops[t.cells[i]].Add(uint64(t.counts[i]))
		n += int(t.counts[i])
	}
	t.used = 0
	if run && t.run > 0 {
		c.req.ops[t.last].Add(uint64(t.run))
		n += int(t.run)
		t.run = 0
	}
	return n
}

// endBatch publishes the counts of the requests handled since the last
// read, now that their responses are written, and records their latency:
// from that read to now.
func (c *conn) endBatch() {
	if c.tally.run == 0 {
		return // no request since the last batch: the run holds the latest
	}
	d := max(time.Since(c.readAt), 0)
	n := c.tally.published + c.publishOps(true)
	c.tally.published = 0
	c.req.latency[latencyBucket(d)].Add(uint64(n))
	c.req.latencyNanos.Add(uint64(d) * uint64(n))
}

// reqTotals is a sum of reqStats.
type reqTotals struct {
	ops          [numOpRows * numStatusCols]uint64
	latency      [numLatencyBounds + 1]uint64
	latencyNanos uint64
}

// ownStats gives c request stats of its own, for a goroutine of its own to
// keep.
func (s *Server) ownStats(c *conn) {
	st := new(reqStats)
	s.mu.Lock()
	c.own = st
	s.mu.Unlock()
	c.req = st
}

// OpCount is how many requests with one opcode got one status.
type OpCount struct {
	Opcode string // the loud form's name, or "UNKNOWN"
	Status string // "success", "key_not_found"... or "other"
	Count  uint64
}

// Histogram is a latency histogram: Counts[i] requests took at most
// Bounds[i] seconds and more than the bound before; Counts[len(Bounds)]
// took longer than every bound.
type Histogram struct {
	Bounds []float64
	Counts []uint64
	Count  uint64
	Sum    float64 // seconds
}

// Metrics is a snapshot of the server's counters for /metrics. Every count
// is since the server started: "stats reset" does not touch them.
type Metrics struct {
	// Ops counts every request handled, by opcode and response status; only
	// non-zero counts are listed. A quiet request that sends no response
	// counts as a success, or for the GETQ family as key_not_found; a
	// forwarded or replicated request counts once its response is known.
	Ops []OpCount
	// Latency is, per request, the time from the read that delivered it
	// (its last bytes) to the end of the write that sent its response;
	// the requests handled from one read share one measure. It includes
	// the wait for other nodes (forwarding, sync replication), not the
	// time a request waited in the socket before this node read it. A
	// quiet request that answers nothing counts until its batch's write.
	Latency Histogram

	// The memcached STAT counters, never reset.
	GetHits, GetMisses, TouchHits, TouchMisses, DeleteHits, DeleteMisses      uint64
	IncrHits, IncrMisses, DecrHits, DecrMisses, CasHits, CasMisses, CasBadval uint64
	AuthCmds, AuthErrors, BytesRead, BytesWritten                             uint64
	// Forwarded counts requests forwarded to their vbucket's owner for
	// legacy clients; NotMyVBucket counts NOT_MY_VBUCKET replies routing
	// sent to vbucket-aware clients.
	Forwarded, NotMyVBucket uint64

	CurrConns                 int64
	TotalConns, RejectedConns uint64
	MaxConns                  int
}

// Metrics returns a snapshot of the server's counters. It is safe for
// concurrent use and blocks only on the server's mutex while it sums them.
func (s *Server) Metrics() Metrics {
	var sum reqTotals
	s.mu.Lock()
	sum = s.closedReq
	for _, l := range s.loops {
		l.stats().addTo(&sum)
	}
	for c := range s.conns {
		if c.own != nil {
			c.own.addTo(&sum)
		}
	}
	cs := s.sumLocked()
	s.mu.Unlock()

	m := Metrics{
		GetHits: cs[cGetHits], GetMisses: cs[cGetMisses], TouchHits: cs[cTouchHits],
		TouchMisses: cs[cTouchMisses], DeleteHits: cs[cDeleteHits], DeleteMisses: cs[cDeleteMisses],
		IncrHits: cs[cIncrHits], IncrMisses: cs[cIncrMisses], DecrHits: cs[cDecrHits],
		DecrMisses: cs[cDecrMisses], CasHits: cs[cCasHits], CasMisses: cs[cCasMisses],
		CasBadval: cs[cCasBadval], AuthCmds: cs[cAuthCmds], AuthErrors: cs[cAuthErrors],
		BytesRead: cs[cBytesRead], BytesWritten: cs[cBytesWritten],
		Forwarded: cs[cForwarded], NotMyVBucket: cs[cNotMyVBucket],
		CurrConns: s.currConns.Load(), TotalConns: s.totalConns.Load(),
		RejectedConns: s.rejectedConns.Load(), MaxConns: s.cfg.MaxConns,
	}
	for cell, n := range sum.ops {
		if n == 0 {
			continue
		}
		row, col := cell/numStatusCols, cell%numStatusCols
		oc := OpCount{Opcode: "UNKNOWN", Status: "other", Count: n}
		if row < len(opRows) {
			oc.Opcode = opRows[row].String()
		}
		if col < len(statusCols) {
			oc.Status = statusCols[col].name
		}
		m.Ops = append(m.Ops, oc)
	}
	h := &m.Latency
	for i := range numLatencyBounds {
		h.Bounds = append(h.Bounds, (latencyMin << i).Seconds())
	}
	h.Counts = sum.latency[:]
	for _, n := range h.Counts {
		h.Count += n
	}
	h.Sum = time.Duration(sum.latencyNanos).Seconds()
	return m
}
