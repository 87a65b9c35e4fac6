package main

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"vbcache/protocol"
)

// Modes of a run.
const (
	ModeRun   = "run"   // mixed GET/SET load for a duration
	ModeLoad  = "load"  // store Items items with pipelined SETQ, then stop
	ModeStats = "stats" // print the server's STAT output (the command only; Run refuses it)
)

// loadBatch is how many SETQs are written before the NOOP that ends a
// pipelined batch during prefill and in load mode.
const loadBatch = 256

// Config describes one run. DefaultConfig gives the defaults.
type Config struct {
	Addr      string        // server address; must be a loopback address
	Mode      string        // ModeRun or ModeLoad
	Conns     int           // connections, one goroutine each
	Depth     int           // requests in flight per connection (run mode)
	GetRatio  float64       // fraction of GETs, the rest are SETs (run mode)
	Keys      int           // key space: key:00000000 .. key:Keys-1 (run mode)
	ValueSize int           // bytes per value
	Items     int           // items to store (load mode)
	Duration  time.Duration // measured time (run mode)
	Warmup    time.Duration // unmeasured load before the measured time (run mode)
	Think     time.Duration // pause after each batch's responses, as a client working between requests (run mode)
	MaxOps    int64         // stop after this many measured ops; 0 = no limit
	Prefill   bool          // SET every key once before the warmup (run mode)
	VBuckets  int           // if > 0, send the CRC vbucket of each key for this many vbuckets
	Owner     string        // if set, use only keys the server at this address holds active (see owner.go)
	Seed      uint64        // random seed; 0 picks one from the clock
	IOTimeout time.Duration // a connection with no progress for this long fails
	Timeout   time.Duration // hard limit on the whole run; 0 = derived from the others
}

// DefaultConfig returns the configuration used when no flag is given.
func DefaultConfig() Config {
	return Config{
		Addr:      "127.0.0.1:11211",
		Mode:      ModeRun,
		Conns:     16,
		Depth:     1,
		GetRatio:  0.9,
		Keys:      100000,
		ValueSize: 100,
		Duration:  10 * time.Second,
		Warmup:    time.Second,
		Prefill:   true,
		IOTimeout: 5 * time.Second,
	}
}

// validate checks cfg and fills derived defaults.
func (cfg *Config) validate() error {
	if err := checkLoopback(cfg.Addr); err != nil {
		return err
	}
	switch {
	case cfg.Mode != ModeRun && cfg.Mode != ModeLoad:
		return fmt.Errorf("mode %q: want %q or %q", cfg.Mode, ModeRun, ModeLoad)
	case cfg.Conns < 1 || cfg.Conns > 10000:
		return fmt.Errorf("conns %d: want 1..10000", cfg.Conns)
	case cfg.Depth < 1 || cfg.Depth > 4096:
		return fmt.Errorf("depth %d: want 1..4096", cfg.Depth)
	case cfg.GetRatio < 0 || cfg.GetRatio > 1:
		return fmt.Errorf("get-ratio %g: want 0..1", cfg.GetRatio)
	case cfg.Keys < 1:
		return fmt.Errorf("keys %d: want >= 1", cfg.Keys)
	case cfg.ValueSize < 0 || cfg.ValueSize > 16<<20:
		return fmt.Errorf("value-size %d: want 0..16MiB", cfg.ValueSize)
	case cfg.Mode == ModeLoad && cfg.Items < 1:
		return fmt.Errorf("items %d: load mode needs >= 1", cfg.Items)
	case cfg.Mode == ModeRun && cfg.Duration <= 0:
		return fmt.Errorf("duration %v: want > 0", cfg.Duration)
	case cfg.Warmup < 0 || cfg.MaxOps < 0 || cfg.Timeout < 0:
		return errors.New("warmup, max-ops and timeout must not be negative")
	case cfg.Think < 0 || cfg.Think > time.Second:
		return fmt.Errorf("think %v: want 0..1s", cfg.Think)
	case cfg.VBuckets < 0 || cfg.VBuckets&(cfg.VBuckets-1) != 0:
		return fmt.Errorf("vbuckets %d: want 0 or a power of two", cfg.VBuckets)
	case cfg.IOTimeout <= 0:
		return fmt.Errorf("io-timeout %v: want > 0", cfg.IOTimeout)
	case cfg.Mode == ModeRun && cfg.Keys > maxKeyCandidates, cfg.Mode == ModeLoad && cfg.Items > maxKeyCandidates:
		return fmt.Errorf("keys and items: want at most %d", uint64(maxKeyCandidates))
	}
	if cfg.Owner != "" {
		if _, _, err := net.SplitHostPort(cfg.Owner); err != nil {
			return fmt.Errorf("owner %q: %w", cfg.Owner, err)
		}
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = cfg.Warmup + cfg.Duration + 2*time.Minute
		if cfg.Mode == ModeLoad {
			cfg.Timeout = 10 * time.Minute
		}
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	return nil
}

// checkLoopback fails unless addr is host:port with a loopback host.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("addr %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("addr %q: only loopback addresses are allowed", addr)
	}
	return nil
}

// Result is what a run measured. Latencies and op counts cover the measured
// phase only; errors are counted in every phase.
type Result struct {
	Mode      string  `json:"mode"`
	Addr      string  `json:"addr"`
	Conns     int     `json:"conns"`
	Depth     int     `json:"depth"`
	GetRatio  float64 `json:"get_ratio"`
	Keys      int     `json:"keys"`
	ValueSize int     `json:"value_size"`

	Seconds   float64 `json:"seconds"` // measured wall time
	Ops       uint64  `json:"ops"`     // measured requests (load mode: items stored)
	OpsPerSec float64 `json:"ops_per_sec"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	P999us    float64 `json:"p999_us"`
	MaxUs     float64 `json:"max_us"`
	MeanUs    float64 `json:"mean_us"`
	Gets      uint64  `json:"gets"`
	GetHits   uint64  `json:"get_hits"`
	GetMisses uint64  `json:"get_misses"`
	Sets      uint64  `json:"sets"`

	Errors          uint64 `json:"errors"`           // op_errors + bad_values + conn_errors
	OpErrors        uint64 `json:"op_errors"`        // unexpected statuses
	BadValues       uint64 `json:"bad_values"`       // GET hits whose value had the wrong length
	ConnErrors      uint64 `json:"conn_errors"`      // connections that failed, including ...
	ConnectFailures uint64 `json:"connect_failures"` // ... those that never connected

	PrefillItems   uint64  `json:"prefill_items"` // items stored by the prefill or load
	PrefillSeconds float64 `json:"prefill_seconds"`

	KeySelection *keySelection `json:"key_selection,omitempty"` // with -owner: how the keys were chosen

	StatusErrors map[string]uint64 `json:"status_errors,omitempty"` // "0x82 Out of memory": count
	ErrorSamples []string          `json:"error_samples,omitempty"` // a few distinct messages

	hist Histogram
}

// phases are the times that split a run, fixed before the workers start
// their load loops and read-only afterwards.
type phases struct {
	measureStart time.Time // batches started before this are warmup
	end          time.Time // no batch starts at or after this
}

// shared is the state the workers of one run share.
type shared struct {
	cfg      *Config
	keys     []uint32  // with Owner: the ids of the keys to use; nil: ids 0..n-1
	deadline time.Time // hard deadline: no I/O is allowed to wait beyond it
	stop     atomic.Bool
	opsLeft  atomic.Int64 // measured ops not yet claimed, when MaxOps > 0
	ready    sync.WaitGroup
	start    chan struct{} // closed when phases is set
	phases   phases
}

// Run connects cfg.Conns connections to cfg.Addr and drives them as cfg
// says. It blocks until the run is over, ctx is cancelled or cfg.Timeout
// passes, and always returns a Result (with whatever was measured) unless
// cfg is invalid. Connection failures are counted in the Result, not
// returned as errors.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	sh := &shared{cfg: &cfg, start: make(chan struct{})}
	sh.deadline, _ = ctx.Deadline()
	var sel *keySelection
	if cfg.Owner != "" {
		n := cfg.Keys
		if cfg.Mode == ModeLoad {
			n = cfg.Items
		}
		var err error
		sh.keys, sel, err = ownerKeys(ctx, cfg.Addr, cfg.Owner, n, cfg.IOTimeout)
		if err != nil {
			return nil, fmt.Errorf("choosing keys owned by %s: %w", cfg.Owner, err)
		}
	}
	sh.opsLeft.Store(cfg.MaxOps)
	stopWatch := context.AfterFunc(ctx, func() { sh.stop.Store(true) })
	defer stopWatch()

	workers := make([]*worker, cfg.Conns)
	var done sync.WaitGroup
	began := time.Now()
	sh.ready.Add(cfg.Conns)
	done.Add(cfg.Conns)
	for i := range workers {
		w := newWorker(i, sh)
		workers[i] = w
		go func() {
			defer done.Done()
			w.run(ctx)
		}()
	}
	sh.ready.Wait()
	loaded := time.Now()
	if cfg.Mode == ModeRun {
		sh.phases.measureStart = loaded.Add(cfg.Warmup)
		sh.phases.end = sh.phases.measureStart.Add(cfg.Duration)
	}
	close(sh.start)
	done.Wait()

	res := &Result{
		Mode: cfg.Mode, Addr: cfg.Addr, Conns: cfg.Conns, Depth: cfg.Depth,
		GetRatio: cfg.GetRatio, Keys: cfg.Keys, ValueSize: cfg.ValueSize,
		StatusErrors: map[string]uint64{}, KeySelection: sel,
	}
	var lastDone time.Time
	for _, w := range workers {
		res.add(w)
		if w.lastDone.After(lastDone) {
			lastDone = w.lastDone
		}
	}
	if cfg.Prefill || cfg.Mode == ModeLoad {
		res.PrefillSeconds = loaded.Sub(began).Seconds()
	}
	if cfg.Mode == ModeLoad {
		res.Ops = res.PrefillItems
		res.Seconds = res.PrefillSeconds
	} else if lastDone.After(sh.phases.measureStart) {
		res.Seconds = lastDone.Sub(sh.phases.measureStart).Seconds()
	}
	if res.Seconds > 0 {
		res.OpsPerSec = float64(res.Ops) / res.Seconds
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	res.P50us = us(res.hist.Quantile(0.50))
	res.P99us = us(res.hist.Quantile(0.99))
	res.P999us = us(res.hist.Quantile(0.999))
	res.MaxUs = us(res.hist.Max())
	res.MeanUs = us(res.hist.Mean())
	res.Errors = res.OpErrors + res.BadValues + res.ConnErrors
	return res, nil
}

// add merges one finished worker's counts into res.
func (res *Result) add(w *worker) {
	res.hist.Merge(&w.hist)
	res.Ops += w.ops
	res.Gets += w.gets
	res.GetHits += w.hits
	res.GetMisses += w.gets - w.hits
	res.Sets += w.sets
	res.OpErrors += w.opErrors
	res.BadValues += w.badValues
	res.PrefillItems += w.loaded
	for s, n := range w.statuses {
		if n > 0 {
			res.StatusErrors[fmt.Sprintf("0x%02x %s", s, protocol.Status(s).Message())] += n
		}
	}
	if w.err != nil {
		res.ConnErrors++
		if w.connectFailed {
			res.ConnectFailures++
		}
		res.sample(w.err.Error())
	}
	if w.opErrSample != "" {
		res.sample(w.opErrSample)
	}
}

// sample keeps a few distinct error messages for the report.
func (res *Result) sample(msg string) {
	if len(res.ErrorSamples) < 5 && !slices.Contains(res.ErrorSamples, msg) {
		res.ErrorSamples = append(res.ErrorSamples, msg)
	}
}

// opKind is what one request of a batch was.
type opKind uint8

const (
	opGet opKind = iota
	opSet
)

// worker drives one connection. All its fields are owned by its goroutine
// until Run's done.Wait returns.
type worker struct {
	id  int
	sh  *shared
	cfg *Config
	rng *rand.Rand

	nc          net.Conn
	rd          *frameReader
	wbuf        []byte
	key         []byte
	value       []byte
	kinds       []opKind // the requests of the batch in flight
	opaque      uint32
	deadlineSet time.Time // when the connection deadline was last moved

	hist      Histogram
	ops       uint64
	gets      uint64
	hits      uint64
	sets      uint64
	loaded    uint64
	opErrors  uint64
	badValues uint64
	statuses  [256]uint64 // unexpected statuses; 0xff also counts larger codes
	lastDone  time.Time   // when the last measured batch completed

	err           error // why the connection failed, if it did
	connectFailed bool
	opErrSample   string
}

func newWorker(id int, sh *shared) *worker {
	cfg := sh.cfg
	value := make([]byte, cfg.ValueSize)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	return &worker{
		id:    id,
		sh:    sh,
		cfg:   cfg,
		rng:   rand.New(rand.NewPCG(cfg.Seed, uint64(id))),
		key:   make([]byte, 0, 32),
		value: value,
		kinds: make([]opKind, cfg.Depth),
		wbuf:  make([]byte, 0, max(cfg.Depth, loadBatch+1)*(protocol.HeaderLen+8+32+cfg.ValueSize)),
	}
}

// run connects, does this worker's share of the prefill or load, waits for
// the other workers and then, in run mode, drives the mixed load. It calls
// sh.ready.Done exactly once.
func (w *worker) run(ctx context.Context) {
	readyDone := false
	markReady := func() {
		if !readyDone {
			readyDone = true
			w.sh.ready.Done()
		}
	}
	defer markReady()
	w.err = w.connect(ctx)
	if w.err != nil {
		w.connectFailed = true
		return
	}
	defer w.nc.Close()
	if w.cfg.Mode == ModeLoad || w.cfg.Prefill {
		n := w.cfg.Keys
		if w.cfg.Mode == ModeLoad {
			n = w.cfg.Items
		}
		lo, hi := w.id*n/w.cfg.Conns, (w.id+1)*n/w.cfg.Conns
		if w.err = w.load(lo, hi); w.err != nil {
			return
		}
	}
	markReady()
	if w.cfg.Mode != ModeRun {
		return
	}
	<-w.sh.start
	w.err = w.mixed()
}

func (w *worker) connect(ctx context.Context) error {
	d := net.Dialer{Timeout: w.cfg.IOTimeout, Deadline: w.sh.deadline}
	nc, err := d.DialContext(ctx, "tcp", w.cfg.Addr)
	if err != nil {
		return err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true) // the default, stated: batches go out at once
	}
	w.nc = nc
	w.rd = newFrameReader(nc, uint32(max(1<<20, w.cfg.ValueSize+4096)))
	return nil
}

// stopping reports whether the run was cancelled or timed out.
func (w *worker) stopping() bool { return w.sh.stop.Load() }

// refreshDeadline moves the connection deadline to now+IOTimeout (never past
// the hard deadline) when it has grown stale, so that a stalled server fails
// the connection within IOTimeout without a syscall per batch.
func (w *worker) refreshDeadline(now time.Time) error {
	if now.Sub(w.deadlineSet) < w.cfg.IOTimeout/4 {
		return nil
	}
	w.deadlineSet = now
	d := now.Add(w.cfg.IOTimeout)
	if d.After(w.sh.deadline) {
		d = w.sh.deadline
	}
	return w.nc.SetDeadline(d)
}

// load stores keys lo..hi-1 with batches of SETQ, each ended by a NOOP.
func (w *worker) load(lo, hi int) error {
	for next := lo; next < hi; {
		if w.stopping() {
			return errors.New("stopped before the load finished (timeout or signal)")
		}
		if err := w.refreshDeadline(time.Now()); err != nil {
			return err
		}
		w.wbuf = w.wbuf[:0]
		n := min(loadBatch, hi-next)
		for i := range n {
			w.appendSet(protocol.OpSetQ, w.keyID(next+i))
		}
		w.opaque++
		noop := w.opaque
		w.wbuf = protocol.AppendHeader(w.wbuf, protocol.MagicRequest, protocol.OpNoop, 0, 0, protocol.DataTypeRaw, 0, 0, noop, 0)
		if _, err := w.nc.Write(w.wbuf); err != nil {
			return err
		}
		for {
			resp, err := w.rd.next()
			if err != nil {
				return err
			}
			if resp.Opcode == protocol.OpNoop && resp.Opaque == noop {
				break
			}
			if resp.Opcode != protocol.OpSetQ {
				return fmt.Errorf("unexpected %v response during load", resp.Opcode)
			}
			w.opError(resp.Status(), "SETQ")
			n-- // a SETQ answered only if it failed
		}
		w.loaded += uint64(n)
		next += min(loadBatch, hi-next)
	}
	return nil
}

// mixed runs batches of Depth GETs and SETs until the measured phase ends,
// MaxOps measured ops are done, or the run stops.
func (w *worker) mixed() error {
	ph := w.sh.phases
	depth := w.cfg.Depth
	for !w.stopping() {
		t0 := time.Now()
		if !t0.Before(ph.end) {
			return nil
		}
		measuring := !t0.Before(ph.measureStart)
		n := depth
		if measuring && w.cfg.MaxOps > 0 {
			left := w.sh.opsLeft.Add(-int64(depth))
			if left <= -int64(depth) {
				return nil
			}
			if left < 0 {
				n = depth + int(left)
			}
		}
		if err := w.refreshDeadline(t0); err != nil {
			return err
		}
		w.wbuf = w.wbuf[:0]
		first := w.opaque + 1
		for i := range n {
			k := w.keyID(w.rng.IntN(w.cfg.Keys))
			if w.rng.Float64() < w.cfg.GetRatio {
				w.kinds[i] = opGet
				w.appendGet(k)
			} else {
				w.kinds[i] = opSet
				w.appendSet(protocol.OpSet, k)
			}
		}
		if _, err := w.nc.Write(w.wbuf); err != nil {
			return err
		}
		for i := range n {
			resp, err := w.rd.next()
			if err != nil {
				return err
			}
			if err := w.check(&resp, first+uint32(i), w.kinds[i], measuring); err != nil {
				return err
			}
			if measuring {
				w.hist.Record(w.rd.readAt.Sub(t0))
			}
		}
		if measuring {
			w.ops += uint64(n)
			w.lastDone = w.rd.readAt
		}
		if w.cfg.Think > 0 {
			time.Sleep(w.cfg.Think)
		}
	}
	return nil
}

// check accounts for the response to request opaque of the given kind. It
// returns an error only when the stream is out of step and the connection
// must be dropped. Errors are always counted, hits, misses and sets only
// when measuring.
func (w *worker) check(resp *protocol.Request, opaque uint32, kind opKind, measuring bool) error {
	want := protocol.OpGet
	if kind == opSet {
		want = protocol.OpSet
	}
	if resp.Opcode != want || resp.Opaque != opaque {
		return fmt.Errorf("response out of step: got %v opaque %d, want %v opaque %d",
			resp.Opcode, resp.Opaque, want, opaque)
	}
	st := resp.Status()
	switch {
	case kind == opSet && st == protocol.StatusOK:
		if measuring {
			w.sets++
		}
	case kind == opSet:
		w.opError(st, "SET")
	case st == protocol.StatusOK:
		if len(resp.Value) != w.cfg.ValueSize {
			w.badValues++
			if w.opErrSample == "" {
				w.opErrSample = fmt.Sprintf("GET hit with a %d-byte value, want %d", len(resp.Value), w.cfg.ValueSize)
			}
		}
		if measuring {
			w.gets++
			w.hits++
		}
	case st == protocol.StatusKeyNotFound:
		if measuring {
			w.gets++
		}
	default:
		w.opError(st, "GET")
	}
	return nil
}

// opError counts a request answered with an unexpected status.
func (w *worker) opError(st protocol.Status, op string) {
	w.opErrors++
	w.statuses[min(int(st), len(w.statuses)-1)]++
	if w.opErrSample == "" {
		w.opErrSample = fmt.Sprintf("%s: status 0x%02x (%s)", op, uint16(st), st.Message())
	}
}

// keyID returns the number of the i-th key of the key space: i itself, or
// with -owner the i-th owned key's.
func (w *worker) keyID(i int) uint64 {
	if w.sh.keys != nil {
		return uint64(w.sh.keys[i])
	}
	return uint64(i)
}

// appendKey appends key:%08d of n to dst without allocating.
func appendKey(dst []byte, n uint64) []byte {
	dst = append(dst, "key:"...)
	var digits [20]byte
	d := strconv.AppendUint(digits[:0], n, 10)
	for i := len(d); i < 8; i++ {
		dst = append(dst, '0')
	}
	return append(dst, d...)
}

// vbucketOf returns the header vbucket for key: the Couchbase CRC hash when
// VBuckets is set, else 0 as a legacy client sends.
func (w *worker) vbucketOf(key []byte) uint16 {
	if w.cfg.VBuckets == 0 {
		return 0
	}
	crc := crc32.ChecksumIEEE(key)
	return uint16((crc>>16)&0x7fff) & uint16(w.cfg.VBuckets-1)
}

// appendGet appends a GET of key n to the write buffer.
func (w *worker) appendGet(n uint64) {
	w.key = appendKey(w.key[:0], n)
	w.opaque++
	w.wbuf = protocol.AppendHeader(w.wbuf, protocol.MagicRequest, protocol.OpGet, len(w.key), 0,
		protocol.DataTypeRaw, w.vbucketOf(w.key), len(w.key), w.opaque, 0)
	w.wbuf = append(w.wbuf, w.key...)
}

// appendSet appends a SET or SETQ of key n (flags 0, no expiry) to the write
// buffer.
func (w *worker) appendSet(op protocol.Opcode, n uint64) {
	var extras [8]byte // flags 0, expiration 0
	w.key = appendKey(w.key[:0], n)
	w.opaque++
	w.wbuf = protocol.AppendFrame(w.wbuf, &protocol.Frame{
		Magic: protocol.MagicRequest, Opcode: op, VBucket: w.vbucketOf(w.key), Opaque: w.opaque,
		Extras: extras[:], Key: w.key, Value: w.value,
	})
}
