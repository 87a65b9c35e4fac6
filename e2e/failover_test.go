//go:build linux

package e2e

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Data safety under a write load while a node leaves: a 3-node cluster
// (-replicas 1, sync replication) is preloaded through node0, a legacy client
// keeps writing distinct keys through node0 one at a time, and node2 is
// stopped with a real signal. SIGTERM is a graceful leave: the node hands its
// vbuckets over and exits 0, and the writer must see no error at all. SIGKILL
// is a crash: memberlist declares the node dead and the coordinator promotes
// replicas; the writer may see error statuses meanwhile, but every write
// acknowledged before, during and after must be readable afterwards.

const (
	// failoverPreloadKeys is how many keys are stored before the signal.
	failoverPreloadKeys = 5000
	// failoverMaxWrites bounds the writer whatever happens.
	failoverMaxWrites = 200_000
	// leaveTimeout bounds SIGTERM to exit: the node's 30s -drain-timeout
	// plus a margin.
	leaveTimeout = 35 * time.Second
	// settleTimeout bounds the wait, after node2 exited, for the survivors
	// to agree on a 2-node map with no rebalance in progress.
	settleTimeout = 20 * time.Second
	// failoverBound is the most a SET to a vbucket of the killed node may
	// keep failing after SIGKILL.
	failoverBound = 10 * time.Second
	// writerWarmup is how many writes the writer must have acknowledged
	// before the signal, and again after the map settled.
	writerWarmup = 200
	// warmupTimeout bounds each wait for writerWarmup acknowledgements.
	warmupTimeout = 10 * time.Second
	// quietBatch is how many quiet requests go before each NOOP.
	quietBatch = 500
	// quietTimeout bounds one pipelined batch.
	quietTimeout = 10 * time.Second
	// writeTimeout bounds one of the writer's SETs (rawConn's deadline is
	// 10s per exchange).
	writeTimeout = 10 * time.Second
)

// Opcodes of the pipelined client beyond auth_test.go's GET and SET.
const (
	opcodeGetKQ = 0x0d
	opcodeNoop  = 0x0a
	opcodeSetQ  = 0x11
)

// failoverCluster is a cluster of node processes whose cleanup knows which
// nodes the test stopped on purpose (signal): it stops the others and fails
// the test if any of them exited before it. startCluster returns its nodes.
type failoverCluster struct {
	t     *testing.T
	nodes []*clusterNode
	view  *clusterView // node0's view once the cluster agreed

	mu    sync.Mutex // guards the fields below against the cleanup
	all   []*clusterNode
	ended map[*clusterNode]bool // stopped by the test with a signal
}

// startFailoverCluster starts n nodes with launchClusterNode and waits for
// them to agree with waitCluster (see startCluster). In t.Cleanup every
// node the test did not signal is stopped with SIGTERM and must exit 0
// (server.stop); a signalled node only has its output checked for data
// races. Every node's output is logged if the test failed.
func startFailoverCluster(t *testing.T, n int, extraArgs ...string) *failoverCluster {
	t.Helper()
	requireNode(t)
	fc := &failoverCluster{t: t, ended: map[*clusterNode]bool{}}
	t.Cleanup(fc.cleanup)
	for i := range n {
		fc.mu.Lock()
		running := slices.Clone(fc.all)
		fc.mu.Unlock()
		nd := launchClusterNode(t, i, running, extraArgs)
		fc.mu.Lock()
		fc.all = append(fc.all, nd)
		fc.mu.Unlock()
		t.Logf("%s: kv %s gossip %s http %s (pid %d)", nd.name, nd.kv, nd.gossip, nd.http, nd.srv.cmd.Process.Pid)
	}
	fc.nodes = fc.all
	fc.view = waitCluster(t, fc.nodes, clusterTimeout)
	checkMap(t, fc.view, fc.nodes)
	return fc
}

func (fc *failoverCluster) cleanup() {
	t := fc.t
	fc.mu.Lock()
	defer fc.mu.Unlock()
	var wg sync.WaitGroup
	for _, nd := range fc.all {
		if !fc.ended[nd] {
			wg.Go(func() { nd.srv.stop(t) })
			continue
		}
		select {
		case <-nd.srv.done:
		case <-time.After(stopTimeout):
			nd.srv.cmd.Process.Kill()
			<-nd.srv.done
			t.Errorf("%s still running at cleanup, %v after the test signalled it; killed it", nd.name, stopTimeout)
		}
		out := nd.srv.out.String()
		if strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in %s (see its output)", nd.name)
		}
		if t.Failed() {
			t.Logf("%s (signalled by the test, exit %v) output:\n%s", nd.name, nd.srv.err, out)
		}
	}
	wg.Wait()
}

// signal sends sig to node i's process and returns when it was sent. From
// then on the cleanup does not stop the node or require it to run.
func (fc *failoverCluster) signal(i int, sig syscall.Signal) time.Time {
	fc.t.Helper()
	nd := fc.nodes[i]
	fc.mu.Lock()
	fc.ended[nd] = true
	fc.mu.Unlock()
	at := time.Now()
	if err := nd.srv.cmd.Process.Signal(sig); err != nil {
		fc.t.Fatalf("%s (pid %d): %v: %v", nd.name, nd.srv.cmd.Process.Pid, sig, err)
	}
	fc.t.Logf("sent %v to %s (pid %d)", sig, nd.name, nd.srv.cmd.Process.Pid)
	return at
}

// waitExit waits up to timeout for node i's process to exit and returns
// cmd.Wait's result; it fails the test if the process is still running.
func (fc *failoverCluster) waitExit(i int, timeout time.Duration) error {
	fc.t.Helper()
	nd := fc.nodes[i]
	select {
	case <-nd.srv.done:
		return nd.srv.err
	case <-time.After(timeout):
		fc.t.Fatalf("%s did not exit within %v", nd.name, timeout)
		return nil
	}
}

// checkRunning fails the test if a node other than those the test signalled
// has exited.
func (fc *failoverCluster) checkRunning() {
	fc.t.Helper()
	fc.mu.Lock()
	defer fc.mu.Unlock()
	for _, nd := range fc.all {
		if fc.ended[nd] {
			continue
		}
		select {
		case <-nd.srv.done:
			fc.t.Fatalf("%s exited during the test: %v", nd.name, nd.srv.err)
		default:
		}
	}
}

// waitSettled polls the survivors until clusterProblems finds none, bounded
// by timeout, and returns the first survivor's view.
func (fc *failoverCluster) waitSettled(survivors []*clusterNode, timeout time.Duration) *clusterView {
	t := fc.t
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		problems, views := clusterProblems(t.Context(), survivors)
		if len(problems) == 0 {
			return views[0]
		}
		fc.checkRunning()
		if time.Now().After(deadline) {
			var last []string
			for i, v := range views {
				if v != nil {
					last = append(last, survivors[i].name+": "+v.summary())
				}
			}
			t.Fatalf("no settled %d-node map within %v:\n  %s\nlast views:\n  %s",
				len(survivors), timeout, strings.Join(problems, "\n  "), strings.Join(last, "\n  "))
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// quietFrame is one response of a pipelined batch.
type quietFrame struct {
	opcode uint8
	status uint16
	opaque uint32
	key    []byte
	value  []byte
}

// quietConn is a pipelining binary-protocol client: batches of quiet
// requests closed by a NOOP, whose responses are read up to the NOOP's.
// Requests carry vbucket 0 and no HELLO is sent: the node treats it as a
// legacy client and forwards for it.
type quietConn struct {
	c      net.Conn
	r      *bufio.Reader
	opaque uint32
}

func dialQuiet(addr string) (*quietConn, error) {
	c, err := net.DialTimeout("tcp", addr, memdTimeout)
	if err != nil {
		return nil, err
	}
	return &quietConn{c: c, r: bufio.NewReaderSize(c, 64<<10)}, nil
}

func (q *quietConn) Close() error { return q.c.Close() }

// quietReq is one request of a batch.
type quietReq struct {
	op            uint8
	key           string
	extras, value []byte
}

func appendRequest(b []byte, op uint8, opaque uint32, key string, extras, value []byte) []byte {
	var hd [headerLen]byte
	hd[0], hd[1] = magicRequest, op
	binary.BigEndian.PutUint16(hd[2:], uint16(len(key)))
	hd[4] = uint8(len(extras))
	binary.BigEndian.PutUint32(hd[8:], uint32(len(extras)+len(key)+len(value)))
	binary.BigEndian.PutUint32(hd[12:], opaque)
	b = append(b, hd[:]...)
	b = append(b, extras...)
	b = append(b, key...)
	return append(b, value...)
}

// batch sends reqs and a NOOP in one pipeline, writing from another
// goroutine while it reads, and returns every response before the NOOP's.
// The opaque of reqs[i] is first+i.
func (q *quietConn) batch(reqs []quietReq) (first uint32, resps []quietFrame, err error) {
	first = q.opaque + 1
	var buf []byte
	for i, r := range reqs {
		buf = appendRequest(buf, r.op, first+uint32(i), r.key, r.extras, r.value)
	}
	noop := first + uint32(len(reqs))
	q.opaque = noop
	buf = appendRequest(buf, opcodeNoop, noop, "", nil, nil)
	if err := q.c.SetDeadline(time.Now().Add(quietTimeout)); err != nil {
		return first, nil, err
	}
	werr := make(chan error, 1)
	go func() {
		_, err := q.c.Write(buf)
		werr <- err
	}()
	defer func() {
		if e := <-werr; err == nil && e != nil {
			err = e
		}
	}()
	for {
		var hb [headerLen]byte
		if _, err := io.ReadFull(q.r, hb[:]); err != nil {
			q.c.Close() // unblocks the writer
			return first, resps, err
		}
		hd := parseHeader(hb[:])
		if hd.magic != magicResponse || int(hd.extLen)+int(hd.keyLen) > int(hd.bodyLen) || hd.bodyLen > 32<<20 {
			q.c.Close()
			return first, resps, fmt.Errorf("malformed response %s", describe(hd, nil))
		}
		body := make([]byte, hd.bodyLen)
		if _, err := io.ReadFull(q.r, body); err != nil {
			q.c.Close()
			return first, resps, err
		}
		if hd.opcode == opcodeNoop && hd.opaque == noop {
			if hd.vbStatus != statusOK {
				return first, resps, fmt.Errorf("NOOP: status %s", statusName(hd.vbStatus))
			}
			return first, resps, nil
		}
		if hd.opaque < first || hd.opaque >= noop {
			q.c.Close()
			return first, resps, fmt.Errorf("response %s with an opaque outside the batch %#x..%#x", describe(hd, nil), first, noop)
		}
		e, k := int(hd.extLen), int(hd.extLen)+int(hd.keyLen)
		resps = append(resps, quietFrame{opcode: hd.opcode, status: hd.vbStatus, opaque: hd.opaque, key: body[e:k], value: body[k:]})
	}
}

// preloadKeys stores clusterKeyValue(key) under every key through addr with
// pipelined SETQs; any error answer fails the test.
func preloadKeys(t *testing.T, addr string, keys []string) {
	t.Helper()
	q, err := dialQuiet(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var errs []string
	for start := 0; start < len(keys); start += quietBatch {
		chunk := keys[start:min(start+quietBatch, len(keys))]
		reqs := make([]quietReq, len(chunk))
		for i, k := range chunk {
			reqs[i] = quietReq{op: opcodeSetQ, key: k, extras: make([]byte, 8), value: clusterKeyValue(k)}
		}
		first, resps, err := q.batch(reqs)
		if err != nil {
			t.Fatalf("preload through %s, keys %d..%d: %v", addr, start, start+len(chunk)-1, err)
		}
		for _, r := range resps {
			errs = append(errs, fmt.Sprintf("SETQ %q: %s %s", chunk[r.opaque-first], opcodeName(r.opcode), statusName(r.status)))
		}
	}
	if len(errs) > 0 {
		t.Fatalf("preload through %s: %d errors:\n  %s", addr, len(errs), strings.Join(errs[:min(len(errs), 20)], "\n  "))
	}
}

// readKeys reads keys through addr with pipelined GETKQs: the values found,
// and the keys answered with an error status.
func readKeys(addr string, keys []string) (map[string][]byte, map[string]uint16, error) {
	q, err := dialQuiet(addr)
	if err != nil {
		return nil, nil, err
	}
	defer q.Close()
	found := make(map[string][]byte, len(keys))
	failed := map[string]uint16{}
	for start := 0; start < len(keys); start += quietBatch {
		chunk := keys[start:min(start+quietBatch, len(keys))]
		reqs := make([]quietReq, len(chunk))
		for i, k := range chunk {
			reqs[i] = quietReq{op: opcodeGetKQ, key: k}
		}
		first, resps, err := q.batch(reqs)
		if err != nil {
			return found, failed, fmt.Errorf("GETKQ keys %d..%d: %w", start, start+len(chunk)-1, err)
		}
		for _, r := range resps {
			key := chunk[r.opaque-first]
			switch {
			case r.opcode != opcodeGetKQ:
				return found, failed, fmt.Errorf("answer %s to GETKQ %q", opcodeName(r.opcode), key)
			case r.status != statusOK:
				failed[key] = r.status
			case string(r.key) != key:
				return found, failed, fmt.Errorf("GETKQ %q answered with key %q", key, r.key)
			default:
				found[key] = r.value
			}
		}
	}
	return found, failed, nil
}

// loadWriter SETs "during-i" for i = 0, 1, ... through one legacy
// connection, one request at a time, until stopped or failoverMaxWrites.
type loadWriter struct {
	addr  string
	start time.Time
	stop  chan struct{}
	done  chan struct{}

	mu       sync.Mutex
	sent     int             // SETs sent
	acked    []int           // i of every SET answered status 0
	ackedAt  []time.Duration // when, since start
	statuses map[uint16]int  // error statuses answered
	ioErrs   int             // SETs with no answer (I/O error); the connection is redialled
	events   []string        // the first errors, with when they happened
}

const writerEvents = 20

func duringKey(i int) string { return fmt.Sprintf("during-%d", i) }

func startWriter(addr string) *loadWriter {
	w := &loadWriter{addr: addr, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{}), statuses: map[uint16]int{}}
	go w.run()
	return w
}

func (w *loadWriter) event(format string, args ...any) {
	if len(w.events) < writerEvents {
		w.events = append(w.events, fmt.Sprintf("%v: ", time.Since(w.start).Round(time.Millisecond))+fmt.Sprintf(format, args...))
	}
}

func (w *loadWriter) run() {
	defer close(w.done)
	var rc *rawConn
	defer func() {
		if rc != nil {
			rc.c.Close()
		}
	}()
	for i := 0; i < failoverMaxWrites; i++ {
		select {
		case <-w.stop:
			return
		default:
		}
		if rc == nil {
			c, err := net.DialTimeout("tcp", w.addr, memdTimeout)
			if err != nil {
				w.mu.Lock()
				w.event("dial %s: %v", w.addr, err)
				w.mu.Unlock()
				select {
				case <-w.stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				i--
				continue
			}
			rc = &rawConn{c: c}
		}
		key := duringKey(i)
		w.mu.Lock()
		w.sent++
		w.mu.Unlock()
		status, _, err := rc.exchange(opSet, key, make([]byte, 8), clusterKeyValue(key))
		at := time.Since(w.start)
		w.mu.Lock()
		switch {
		case err != nil:
			w.ioErrs++
			w.event("SET %q: %v", key, err)
		case status != statusOK:
			w.statuses[status]++
			w.event("SET %q: status %s", key, statusName(status))
		default:
			w.acked = append(w.acked, i)
			w.ackedAt = append(w.ackedAt, at)
		}
		w.mu.Unlock()
		if err != nil {
			rc.c.Close()
			rc = nil
		}
	}
}

func (w *loadWriter) ackedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// halt stops the writer and waits for its request in flight.
func (w *loadWriter) halt(t *testing.T) {
	t.Helper()
	close(w.stop)
	select {
	case <-w.done:
	case <-time.After(writeTimeout + 5*time.Second):
		t.Fatalf("writer did not stop within %v", writeTimeout+5*time.Second)
	}
}

// errorStatuses is how many SETs were answered with an error status.
func (w *loadWriter) errorStatuses() int {
	n := 0
	for _, c := range w.statuses {
		n += c
	}
	return n
}

func (w *loadWriter) statusSummary() string {
	var parts []string
	for s, c := range w.statuses {
		parts = append(parts, fmt.Sprintf("%s×%d", statusName(s), c))
	}
	sort.Strings(parts)
	return "[" + strings.Join(parts, " ") + "]"
}

// waitAcked waits, bounded by warmupTimeout, until the writer has at least
// n acknowledged writes.
func (w *loadWriter) waitAcked(t *testing.T, fc *failoverCluster, n int, what string) {
	t.Helper()
	deadline := time.Now().Add(warmupTimeout)
	for w.ackedCount() < n {
		fc.checkRunning()
		select {
		case <-w.done:
			t.Fatalf("writer ended with %d acknowledged writes %s; events: %q", w.ackedCount(), what, w.events)
		default:
		}
		if time.Now().After(deadline) {
			w.mu.Lock()
			defer w.mu.Unlock()
			t.Fatalf("writer has %d acknowledged writes, want %d %s, after %v; events: %q",
				len(w.acked), n, what, warmupTimeout, w.events)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ownerName is the name of the active server of key's vbucket in v's map.
func ownerName(v *clusterView, key string) string {
	vb := vbucketOf([]byte(key), v.VBuckets)
	if int(vb) >= len(v.Map.VBuckets) || len(v.Map.VBuckets[vb]) == 0 {
		return "?"
	}
	i := v.Map.VBuckets[vb][0]
	if i < 0 || i >= len(v.Map.Servers) {
		return "?"
	}
	return v.Map.Servers[i].Name
}

// verifyReadBack reads every key through node (pipelined GETKQs) and
// fails the test for any key missing or with another value than
// clusterKeyValue(key). For missing keys it says where the key's vbucket
// lived before and after, when the write was acknowledged, and what a
// vbucket-aware GET at each survivor answers. It returns how many keys
// were read back intact.
func verifyReadBack(t *testing.T, via *clusterNode, keys []string, before, after *clusterView,
	survivors []*clusterNode, ackedAt map[string]time.Duration) int {
	t.Helper()
	start := time.Now()
	found, failed, err := readKeys(via.kv, keys)
	if err != nil {
		t.Fatalf("reading %d keys through %s: %v", len(keys), via.name, err)
	}
	var missing, wrong []string
	for _, k := range keys {
		v, ok := found[k]
		switch {
		case !ok:
			missing = append(missing, k)
		case string(v) != string(clusterKeyValue(k)):
			wrong = append(wrong, fmt.Sprintf("%q: %d bytes %.40q, want %d bytes", k, len(v), v, len(clusterKeyValue(k))))
		}
	}
	t.Logf("read %d keys through %s in %v: %d intact, %d missing, %d wrong value, %d error answers",
		len(keys), via.name, time.Since(start).Round(time.Millisecond), len(keys)-len(missing)-len(wrong), len(missing), len(wrong), len(failed))
	if len(wrong) > 0 {
		t.Errorf("%d keys read back through %s with a wrong value:\n  %s", len(wrong), via.name, strings.Join(wrong[:min(len(wrong), 20)], "\n  "))
	}
	if len(missing) > 0 {
		var lines []string
		for _, k := range missing[:min(len(missing), 20)] {
			line := fmt.Sprintf("%q vb %d: owner before %s, after %s", k, vbucketOf([]byte(k), before.VBuckets),
				ownerName(before, k), ownerName(after, k))
			if at, ok := ackedAt[k]; ok {
				line += fmt.Sprintf(", acknowledged %v", at)
			}
			if s, ok := failed[k]; ok {
				line += ", GETKQ answered " + statusName(s)
			}
			line += "; aware GET: " + probeHolders(k, before.VBuckets, survivors)
			lines = append(lines, line)
		}
		t.Errorf("%d of %d acknowledged keys missing through %s (first %d):\n  %s",
			len(missing), len(keys), via.name, len(lines), strings.Join(lines, "\n  "))
	}
	return len(keys) - len(missing) - len(wrong)
}

// probeHolders asks every survivor, as a vbucket-aware client, for key.
func probeHolders(key string, vbuckets int, survivors []*clusterNode) string {
	vb := vbucketOf([]byte(key), vbuckets)
	var parts []string
	for _, nd := range survivors {
		c, err := dialMemd(nd.kv)
		if err != nil {
			parts = append(parts, fmt.Sprintf("%s: %v", nd.name, err))
			continue
		}
		if r, err := c.do(opHello, 0, []byte("vbcache-e2e"), nil, nil); err != nil || r.status != statusOK {
			parts = append(parts, fmt.Sprintf("%s: HELLO status %#x err %v", nd.name, r.status, err))
			c.Close()
			continue
		}
		r, err := c.do(opGet, vb, []byte(key), nil, nil)
		c.Close()
		if err != nil {
			parts = append(parts, fmt.Sprintf("%s: %v", nd.name, err))
		} else {
			parts = append(parts, fmt.Sprintf("%s: %s (%d bytes)", nd.name, statusName(r.status), len(r.value)))
		}
	}
	return strings.Join(parts, ", ")
}

// failoverRun is what both tests share up to the signal.
type failoverRun struct {
	fc     *failoverCluster
	w      *loadWriter
	before *clusterView // node0's view just before the signal
	pre    []string     // the preloaded keys
}

// startFailoverRun starts 3 nodes with -replicas 1, preloads
// failoverPreloadKeys keys through node0, starts the writer on node0 and
// waits for it to have writerWarmup acknowledged writes.
func startFailoverRun(t *testing.T) *failoverRun {
	t.Helper()
	fc := startFailoverCluster(t, 3, "-replicas", "1")
	r := &failoverRun{fc: fc}
	for i := range failoverPreloadKeys {
		r.pre = append(r.pre, fmt.Sprintf("pre-%d", i))
	}
	start := time.Now()
	preloadKeys(t, fc.nodes[0].kv, r.pre)
	t.Logf("preloaded %d keys through %s in %v", len(r.pre), fc.nodes[0].name, time.Since(start).Round(time.Millisecond))

	r.w = startWriter(fc.nodes[0].kv)
	t.Cleanup(func() {
		select {
		case <-r.w.stop:
		default:
			close(r.w.stop)
		}
		<-r.w.done
	})
	r.w.waitAcked(t, fc, writerWarmup, "before the signal")
	var err error
	if r.before, err = getCluster(t.Context(), fc.nodes[0].http); err != nil {
		t.Fatal(err)
	}
	return r
}

// finish waits for writerWarmup more acknowledged writes on the settled
// map, stops the writer, logs its figures, and reads back every preloaded
// and every acknowledged key (and extra ones) through node1.
func (r *failoverRun) finish(t *testing.T, signalled time.Time, after *clusterView, extra ...string) *loadWriter {
	t.Helper()
	w := r.w
	r.w.waitAcked(t, r.fc, w.ackedCount()+writerWarmup, "after the map settled")
	w.halt(t)
	elapsed := time.Since(w.start)
	sigAt := signalled.Sub(w.start)
	ackedBefore := 0
	for _, at := range w.ackedAt {
		if at < sigAt {
			ackedBefore++
		}
	}
	t.Logf("writer: %d SETs in %v (%.0f/s), %d acknowledged (%d before the signal, %d after), %d error statuses %s, %d I/O errors",
		w.sent, elapsed.Round(time.Millisecond), float64(w.sent)/elapsed.Seconds(), len(w.acked), ackedBefore,
		len(w.acked)-ackedBefore, w.errorStatuses(), w.statusSummary(), w.ioErrs)
	if len(w.events) > 0 {
		t.Logf("writer's first errors (times since the writer started; signal at %v):\n  %s",
			sigAt.Round(time.Millisecond), strings.Join(w.events, "\n  "))
	}

	ackedAt := map[string]time.Duration{}
	keys := slices.Clone(r.pre)
	for j, i := range w.acked {
		k := duringKey(i)
		keys = append(keys, k)
		ackedAt[k] = w.ackedAt[j] - sigAt // relative to the signal
	}
	keys = append(keys, extra...)
	survivors := r.fc.nodes[:2]
	intact := verifyReadBack(t, r.fc.nodes[1], keys, r.before, after, survivors, ackedAt)
	t.Logf("read back through %s: %d of %d keys intact (%d preloaded, %d acknowledged during the load, %d probe)",
		r.fc.nodes[1].name, intact, len(keys), len(r.pre), len(w.acked), len(extra))
	return w
}

// TestClusterSIGTERMLeaveUnderLoad stops node2 of a loaded 3-node cluster
// with SIGTERM: it must hand its vbuckets over and exit 0 within the drain
// timeout, the writer must see no error, and every preloaded and every
// acknowledged key must read back through node1.
func TestClusterSIGTERMLeaveUnderLoad(t *testing.T) {
	r := startFailoverRun(t)
	fc := r.fc
	sent := fc.signal(2, syscall.SIGTERM)
	err := fc.waitExit(2, leaveTimeout)
	exited := time.Since(sent)
	if err != nil {
		t.Errorf("node2 exited with %v after SIGTERM, want status 0", err)
	}
	out := fc.nodes[2].srv.out.String()
	for _, bad := range []string{"not all handed over", "cut short", "leaving without handing vbuckets over"} {
		if strings.Contains(out, bad) {
			t.Errorf("node2's output says %q: its vbuckets were not all handed over", bad)
		}
	}
	handedOver := ""
	for line := range strings.Lines(out) {
		if strings.Contains(line, "vbuckets handed over") {
			handedOver = strings.TrimSpace(line)
		}
	}
	if handedOver == "" {
		t.Errorf("node2's output has no %q line", "vbuckets handed over")
	}
	t.Logf("node2 exited %v after SIGTERM (%v); %s", exited.Round(time.Millisecond), err, handedOver)

	after := fc.waitSettled(fc.nodes[:2], settleTimeout)
	t.Logf("settled %v after SIGTERM: %s", time.Since(sent).Round(time.Millisecond), after.summary())

	w := r.finish(t, sent, after)
	if n := w.errorStatuses(); n > 0 || w.ioErrs > 0 {
		t.Errorf("the writer saw %d error statuses %s and %d I/O errors during a graceful leave, want none; first: %q",
			n, w.statusSummary(), w.ioErrs, w.events)
	}
}

// TestClusterSIGKILLFailoverUnderLoad kills node2 of a loaded 3-node
// cluster with SIGKILL: a SET of a key node2 owned must succeed through
// node0 within failoverBound, and every preloaded and every acknowledged key
// must read back through node1. The writer may see error statuses meanwhile.
func TestClusterSIGKILLFailoverUnderLoad(t *testing.T) {
	r := startFailoverRun(t)
	fc := r.fc

	// A key whose vbucket node2 owns.
	probe := ""
	for i := 0; probe == ""; i++ {
		if k := fmt.Sprintf("probe-%d", i); ownerName(r.before, k) == "node2" {
			probe = k
		}
	}
	pc, err := dialMemd(fc.nodes[0].kv)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { pc.Close() }()

	killed := fc.signal(2, syscall.SIGKILL)
	var (
		took     time.Duration
		attempts int
		answers  = map[string]int{}
	)
	deadline := killed.Add(failoverBound + 5*time.Second)
	for {
		attempts++
		resp, err := pc.do(opSet, 0, []byte(probe), make([]byte, 8), clusterKeyValue(probe))
		if err == nil && resp.status == statusOK {
			took = time.Since(killed)
			break
		}
		if err != nil {
			answers["I/O error"]++
			pc.Close()
			if pc, err = dialMemd(fc.nodes[0].kv); err != nil {
				t.Fatal(err)
			}
		} else {
			answers[statusName(resp.status)]++
		}
		if time.Now().After(deadline) {
			t.Fatalf("SET %q (vb %d, owned by node2) through node0 still failing %v after SIGKILL, %d attempts: %v",
				probe, vbucketOf([]byte(probe), r.before.VBuckets), failoverBound+5*time.Second, attempts, answers)
		}
		fc.checkRunning()
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("SET %q (vb %d, owned by node2) succeeded through node0 %v after SIGKILL, attempt %d; failed attempts: %v",
		probe, vbucketOf([]byte(probe), r.before.VBuckets), took.Round(time.Millisecond), attempts, answers)
	if took >= failoverBound {
		t.Errorf("failover took %v, want < %v", took.Round(time.Millisecond), failoverBound)
	}

	if err := fc.waitExit(2, stopTimeout); err == nil {
		t.Errorf("node2 exited 0 after SIGKILL")
	} else {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Errorf("node2 after SIGKILL: %v", err)
		} else if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Errorf("node2 after SIGKILL: %v, want killed by SIGKILL", err)
		}
	}
	after := fc.waitSettled(fc.nodes[:2], settleTimeout)
	t.Logf("settled %v after SIGKILL: %s", time.Since(killed).Round(time.Millisecond), after.summary())

	w := r.finish(t, killed, after, probe)
	t.Logf("error statuses during the failover (allowed): %d %s; I/O errors: %d", w.errorStatuses(), w.statusSummary(), w.ioErrs)
}
