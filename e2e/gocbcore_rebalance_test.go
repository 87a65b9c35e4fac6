//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gocbcore "github.com/couchbase/gocbcore/v10"
)

// TestClusterGocbcoreDuringRebalance runs a gocbcore workload through two
// rebalances: a fourth node joins a 3-node cluster, then node1 leaves it
// gracefully (SIGTERM: it hands its vbuckets over and exits 0).
//
// The workload Sets keys k0..k999 in turn, each to a value carrying a
// per-key counter ("k17:v42"), and reads each key back right after. Every
// key is one register: a read must return the last acknowledged write, or a
// write made after it that failed ambiguously (its Set reported an error, so
// it may or may not have been applied; gocbcore's unambiguous timeouts are
// known never to have been sent and do not count as such). Anything else,
// an older value or a miss, is a wrong value and fails the test. Operations
// may fail only with a temporary failure or busy (see rbAllowedKinds);
// errors are counted by kind and phase and logged. With its default retry
// strategy the agent retries NOT_MY_VBUCKET itself.
//
// After the survivors settle the workload stops, and every key must read,
// through the agent, as its last acknowledged Set. A wrong value names the
// key's vbucket and when its Set was acknowledged, to set against the
// nodes' logs (logged when the test fails).
func TestClusterGocbcoreDuringRebalance(t *testing.T) {
	requireNode(t)
	deadline := time.Now().Add(rbTestBudget)
	remaining := func(limit time.Duration) time.Duration {
		return max(min(limit, time.Until(deadline)), time.Second)
	}
	captureGocbcoreLog(t)

	rc := startRebalanceCluster(t, 3, remaining(rbSettleTimeout))

	agent, err := gocbcore.CreateAgent(&gocbcore.AgentConfig{
		BucketName:     "default",
		UserAgent:      "vbcache-e2e-rebalance",
		SeedConfig:     gocbcore.SeedConfig{MemdAddrs: []string{rc.nodes[0].kv}},
		SecurityConfig: gocbcore.SecurityConfig{Auth: gocbcore.PasswordAuthProvider{}},
		KVConfig:       gocbcore.KVConfig{ConnectTimeout: 5 * time.Second, ServerWaitBackoff: 500 * time.Millisecond},
	})
	if err != nil {
		t.Fatalf("CreateAgent: %v", err)
	}
	t.Cleanup(func() {
		// gocbcore v10.8.1's Close can block for good on a mutex in
		// kvMux.clear after a node it had a pipeline to went away under
		// load (seen in goroutine dumps); do not let that hang the suite.
		closed := make(chan error, 1)
		go func() { closed <- agent.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Errorf("agent.Close: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Log("agent.Close did not return within 10s (a gocbcore hang); leaving it")
		}
	})
	waitAgentReady(t, agent)

	w := newRBWorkload(agent, rc.first.VBuckets, rc.nodes[1].kv)
	w.start()
	t.Cleanup(func() { w.stop(t) }) // a no-op once the test has stopped it

	// Phase 0: every key written once on the 3-node cluster.
	rbPollUntil(t, "the workload to write every key once", remaining(15*time.Second), func() (bool, string) {
		n := w.pairsIn(rbPhase3Nodes)
		return n >= rbKeys || w.finished(), fmt.Sprintf("%d Set+Get pairs done", n)
	})

	// Phase 1: node3 joins; wait for the 4 nodes to settle on one map.
	w.setPhase(rbPhaseJoin)
	start := time.Now()
	node3 := rc.add(t)
	t.Logf("%s started: kv %s gossip %s http %s (pid %d), joining %s", node3.name, node3.kv, node3.gossip, node3.http,
		node3.srv.cmd.Process.Pid, rc.nodes[0].gossip)
	v := rc.waitSettled(t, rc.running(), remaining(rbSettleTimeout))
	t.Logf("4 nodes settled %v after %s started: %s", time.Since(start).Round(time.Millisecond), node3.name, v.summary())

	// Phase 2: node1 leaves gracefully; wait for it to exit 0 and for the
	// 3 survivors to settle.
	w.setPhase(rbPhaseLeave)
	start = time.Now()
	node1 := rc.nodes[1]
	rc.leave(t, node1, remaining(rbLeaveTimeout))
	t.Logf("%s exited 0 %v after SIGTERM", node1.name, time.Since(start).Round(time.Millisecond))
	v = rc.waitSettled(t, rc.running(), remaining(rbSettleTimeout))
	t.Logf("3 survivors settled %v after SIGTERM to %s: %s", time.Since(start).Round(time.Millisecond), node1.name, v.summary())

	// Phase 3: a little more workload on the settled cluster, then stop.
	w.setPhase(rbPhaseSettled)
	rbPollUntil(t, "some workload on the settled survivors", remaining(10*time.Second), func() (bool, string) {
		n := w.pairsIn(rbPhaseSettled)
		return n >= rbKeys/2 || w.finished(), fmt.Sprintf("%d Set+Get pairs done", n)
	})
	if !w.stop(t) {
		t.FailNow() // the workers still touch the keys' state
	}
	w.report(t)

	// The agent should now know the survivors' map; log what it holds.
	rbPollUntil(t, "the agent to learn the survivors' map", remaining(10*time.Second), func() (bool, string) {
		snap, err := agent.ConfigSnapshot()
		if err != nil {
			return false, err.Error()
		}
		n, _ := snap.NumServers()
		return n == 3 && snap.RevID() >= v.Rev, fmt.Sprintf("agent rev %d with %d servers; cluster rev %d", snap.RevID(), n, v.Rev)
	})

	w.checkFinal(t, v, remaining(15*time.Second))
	t.Logf("test took %v of its %v budget", time.Since(deadline.Add(-rbTestBudget)).Round(time.Millisecond), rbTestBudget)
}

const (
	// rbTestBudget bounds the test's waits: each takes what is left of it
	// at most (stopping the workload and the nodes come on top).
	rbTestBudget = 70 * time.Second
	// rbSettleTimeout bounds one wait for the cluster to settle.
	rbSettleTimeout = 30 * time.Second
	// rbLeaveTimeout bounds the wait for a SIGTERMed node to exit: above the
	// node's default 30s -drain-timeout.
	rbLeaveTimeout = 35 * time.Second
	// rbKeys is how many keys the workload cycles through.
	rbKeys = 1000
	// rbWorkers run the workload, each owning the keys i with
	// i%rbWorkers == its index, so each key's operations are in order.
	rbWorkers = 8
	// rbMaxOps bounds the operations (Sets plus Gets) of the workload.
	rbMaxOps = 60_000
	// rbPairInterval paces the workload: at most one Set+Get pair starts
	// per interval across all workers, so that rbMaxOps lasts the test.
	rbPairInterval = 500 * time.Microsecond
	// rbOpTimeout is each operation's deadline.
	rbOpTimeout = 5 * time.Second
	// rbFinalTries is how many times the final check reads a key whose
	// Get fails with an allowed error.
	rbFinalTries = 5
)

// Workload phases.
const (
	rbPhase3Nodes  = iota // the 3 first nodes, settled
	rbPhaseJoin           // node3 started until the 4 nodes settle
	rbPhaseLeave          // node1 SIGTERMed until the 3 survivors settle
	rbPhaseSettled        // the survivors settled
	rbPhases
)

var rbPhaseNames = [rbPhases]string{"3 nodes", "node3 joining", "node1 leaving", "survivors settled"}

// rbPollUntil calls cond every 100ms until it reports true, failing the test
// with what it last said if timeout passes.
func rbPollUntil(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			t.Logf("waited %v for %s: %s", time.Since(start).Round(time.Millisecond), what, state)
			return
		}
		if time.Since(start) > timeout {
			t.Fatalf("waited %v for %s: %s", timeout, what, state)
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-tick.C:
		}
	}
}

// rbCluster is a cluster whose membership the test changes: nodes are
// added and one leaves. startCluster's cleanup would count a node that left
// as crashed, so this one tracks which nodes the test stopped.
type rbCluster struct {
	mu    sync.Mutex // guards nodes and left against the cleanup
	nodes []*clusterNode
	left  map[*clusterNode]bool // stopped by the test, exit already checked
	first *clusterView          // the settled view of the first nodes
}

// startRebalanceCluster starts n nodes as startCluster does (node0 first,
// every other joining node0's gossip address, with E2E_NODE_ARGS) and waits
// up to timeout for them to settle. In t.Cleanup every node still running
// is stopped with SIGTERM and must exit 0; every node's output is logged if
// the test failed.
func startRebalanceCluster(t *testing.T, n int, timeout time.Duration) *rbCluster {
	t.Helper()
	rc := &rbCluster{left: map[*clusterNode]bool{}}
	t.Cleanup(func() {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		var wg sync.WaitGroup
		for _, nd := range rc.nodes {
			if rc.left[nd] {
				if t.Failed() {
					t.Logf("%s (left during the test) %s output:\n%s", nd.name, nd.srv.addr, nd.srv.out)
				}
				continue
			}
			wg.Go(func() { nd.srv.stop(t) })
		}
		wg.Wait()
	})
	for range n {
		nd := rc.add(t)
		t.Logf("%s: kv %s gossip %s http %s (pid %d)", nd.name, nd.kv, nd.gossip, nd.http, nd.srv.cmd.Process.Pid)
	}
	rc.first = rc.waitSettled(t, rc.running(), timeout)
	t.Logf("%d nodes settled: %s", n, rc.first.summary())
	return rc
}

// add starts one more node, named after how many were ever started, with
// the flags startCluster gives its nodes, joining node0's gossip address.
func (rc *rbCluster) add(t *testing.T) *clusterNode {
	t.Helper()
	rc.mu.Lock()
	all := slices.Clone(rc.nodes)
	rc.mu.Unlock()
	nd := launchClusterNode(t, len(all), all, nil)
	rc.mu.Lock()
	rc.nodes = append(rc.nodes, nd)
	rc.mu.Unlock()
	return nd
}

// running returns the nodes the test has not stopped.
func (rc *rbCluster) running() []*clusterNode {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []*clusterNode
	for _, nd := range rc.nodes {
		if !rc.left[nd] {
			out = append(out, nd)
		}
	}
	return out
}

// leave sends nd SIGTERM and waits up to timeout for it to exit. It must
// exit 0, report no data race, and log that it handed its vbuckets over.
func (rc *rbCluster) leave(t *testing.T, nd *clusterNode, timeout time.Duration) {
	t.Helper()
	if err := nd.srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", nd.name, err)
	}
	select {
	case <-nd.srv.done:
	case <-time.After(timeout):
		t.Fatalf("%s still running %v after SIGTERM", nd.name, timeout) // the cleanup kills it
	}
	rc.mu.Lock()
	rc.left[nd] = true
	rc.mu.Unlock()
	out := nd.srv.out.String()
	if nd.srv.err != nil {
		t.Errorf("%s exited with %v after SIGTERM, want status 0", nd.name, nd.srv.err)
	}
	if strings.Contains(out, "WARNING: DATA RACE") {
		t.Errorf("the race detector found a data race in %s (see its output)", nd.name)
	}
	if strings.Contains(out, "vbuckets not all handed over") || !strings.Contains(out, "vbuckets handed over") {
		t.Errorf("%s did not log that it handed its vbuckets over", nd.name)
	}
	for line := range strings.Lines(out) {
		if strings.Contains(line, "vbuckets handed over") || strings.Contains(line, "level=WARN") {
			t.Logf("%s: %s", nd.name, strings.TrimSpace(line))
		}
	}
}

// waitSettled polls nodes until clusterProblems finds none and returns the
// first node's view. It fails the test if one of them exits or timeout
// passes, with what still disagreed and every node's last view.
func (rc *rbCluster) waitSettled(t *testing.T, nodes []*clusterNode, timeout time.Duration) *clusterView {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		problems, views := clusterProblems(t.Context(), nodes)
		if len(problems) == 0 {
			return views[0]
		}
		for _, nd := range nodes {
			select {
			case <-nd.srv.done:
				t.Fatalf("%s exited while waiting for %d nodes to settle: %v", nd.name, len(nodes), nd.srv.err)
			default:
			}
		}
		if time.Since(start) > timeout {
			var last []string
			for i, v := range views {
				if v != nil {
					last = append(last, fmt.Sprintf("%s: %s forward=%v moving=%d", nodes[i].name, v.summary(), len(v.Map.Forward) > 0, v.Progress.VBucketsMoving))
				}
			}
			t.Fatalf("the %d nodes did not settle within %v:\n  %s\nlast views:\n  %s",
				len(nodes), timeout, strings.Join(problems, "\n  "), strings.Join(last, "\n  "))
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-tick.C:
		}
	}
}

// rbValue is a state a key may hold: a value, or absent.
type rbValue struct {
	present bool
	value   string
	acked   bool      // its Set succeeded (absent before any Set counts as acked)
	kind    string    // the error kind of its Set if that failed
	at      time.Time // when its Set returned
}

func (v rbValue) String() string {
	s := "absent"
	if v.present {
		s = fmt.Sprintf("%q", v.value)
	}
	if v.kind != "" {
		s += " (its Set failed: " + v.kind + ")"
	}
	if !v.at.IsZero() {
		s += " at " + v.at.Format("15:04:05.000")
	}
	return s
}

// rbKey is one key's register, touched only by the worker that owns it.
// candidates are the states a read may find, oldest first: the last
// acknowledged one, then the values of Sets that failed since and may have
// been applied.
type rbKey struct {
	name       string
	next       int // counter of the next value
	candidates []rbValue
}

// observe checks a read of the key against its candidates. It returns the
// index matched, or -1 for a wrong value, and keeps only the candidates
// from the one matched on (an older one may no longer be read); after a
// wrong value it keeps what was read.
func (k *rbKey) observe(got rbValue) int {
	for i, c := range k.candidates {
		if c.present == got.present && (!got.present || c.value == got.value) {
			k.candidates = k.candidates[i:]
			return i
		}
	}
	got.acked = true
	k.candidates = []rbValue{got}
	return -1
}

// rbWorkload is the gocbcore workload of TestClusterGocbcoreDuringRebalance.
type rbWorkload struct {
	agent     *gocbcore.Agent
	keys      []*rbKey
	vbuckets  int    // the cluster's vbucket count, for messages
	leavingKV string // kv address of the node the test will stop

	phase    atomic.Int32
	ops      atomic.Int64 // operations started or reserved
	done     chan struct{}
	quit     chan struct{}
	quitOnce sync.Once
	wg       sync.WaitGroup
	pace     *time.Ticker
	began    time.Time
	ended    time.Time

	mu         sync.Mutex // guards everything below
	pairs      [rbPhases]int
	opCount    [rbPhases]map[string]int // "Set", "Get" -> count
	errCount   [rbPhases]map[string]int // "Set: kind" -> count
	errSamples map[string][]string      // "Set: kind" -> first few errors
	wrong      []string                 // first few wrong values
	wrongCount int
	unacked    map[string]int // reads that found a failed Set's value, by the Set's error kind
	exhausted  bool           // rbMaxOps reached before the test stopped the workload
}

func newRBWorkload(agent *gocbcore.Agent, vbuckets int, leavingKV string) *rbWorkload {
	w := &rbWorkload{
		agent: agent, vbuckets: vbuckets, leavingKV: leavingKV, done: make(chan struct{}), quit: make(chan struct{}),
		errSamples: map[string][]string{}, unacked: map[string]int{},
	}
	for i := range rbKeys {
		w.keys = append(w.keys, &rbKey{name: fmt.Sprintf("k%d", i), candidates: []rbValue{{acked: true}}})
	}
	for p := range rbPhases {
		w.opCount[p], w.errCount[p] = map[string]int{}, map[string]int{}
	}
	return w
}

func (w *rbWorkload) setPhase(p int) { w.phase.Store(int32(p)) }

func (w *rbWorkload) pairsIn(p int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pairs[p]
}

// finished reports whether every worker has ended (the op budget ran out).
func (w *rbWorkload) finished() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

func (w *rbWorkload) start() {
	w.pace = time.NewTicker(rbPairInterval)
	w.began = time.Now()
	for i := range rbWorkers {
		w.wg.Go(func() { w.run(i) })
	}
	go func() {
		w.wg.Wait()
		w.pace.Stop()
		close(w.done)
	}()
}

// stop tells the workers to stop and waits for them (each finishes the
// pair it is in, bounded by the operations' deadlines). It reports whether
// they all ended.
func (w *rbWorkload) stop(t *testing.T) bool {
	t.Helper()
	w.quitOnce.Do(func() {
		close(w.quit)
		bound := 2*rbOpTimeout + 5*time.Second
		select {
		case <-w.done:
		case <-time.After(bound):
			t.Errorf("the workload did not stop within %v", bound)
			return
		}
		w.mu.Lock()
		w.ended = time.Now()
		w.mu.Unlock()
	})
	return w.finished()
}

// run is worker i: it cycles through its keys, Set then Get.
func (w *rbWorkload) run(i int) {
	for n := 0; ; n++ {
		select {
		case <-w.quit:
			return
		case <-w.pace.C:
		}
		if w.ops.Add(2) > rbMaxOps {
			w.mu.Lock()
			w.exhausted = true
			w.mu.Unlock()
			return
		}
		k := w.keys[(i+n*rbWorkers)%rbKeys]
		w.pair(k)
	}
}

// pair Sets k to its next value and reads it back.
func (w *rbWorkload) pair(k *rbKey) {
	val := fmt.Sprintf("%s:v%d", k.name, k.next)
	k.next++
	err := w.set(k.name, val)
	at := time.Now()
	kind := w.record("Set", err)
	if err == nil {
		k.candidates = []rbValue{{present: true, value: val, acked: true, at: at}}
	} else if !errors.Is(err, gocbcore.ErrUnambiguousTimeout) { // that one was never sent
		k.candidates = append(k.candidates, rbValue{present: true, value: val, kind: kind, at: at})
	}

	got, err := w.get(k.name)
	got.at = time.Now()
	w.record("Get", err)
	w.mu.Lock()
	w.pairs[w.phase.Load()]++
	w.mu.Unlock()
	if err != nil {
		return
	}
	want := k.candidates
	switch i := k.observe(got); {
	case i < 0:
		w.mu.Lock()
		w.wrongCount++
		if len(w.wrong) < 20 {
			w.wrong = append(w.wrong, fmt.Sprintf("[%s] Get %s (vb %d) after Set %q: %s, want one of %v",
				rbPhaseNames[w.phase.Load()], k.name, vbucketOf([]byte(k.name), w.vbuckets), val, got, want))
		}
		w.mu.Unlock()
	case i > 0 || !k.candidates[0].acked:
		w.mu.Lock()
		w.unacked[k.candidates[0].kind]++
		w.mu.Unlock()
	}
}

// errRBNoCallback says gocbcore never called an operation back.
var errRBNoCallback = errors.New("no callback from gocbcore")

func (w *rbWorkload) set(key, val string) error {
	ch := make(chan error, 1)
	_, err := w.agent.Set(gocbcore.SetOptions{
		Key: []byte(key), Value: []byte(val), Deadline: time.Now().Add(rbOpTimeout),
	}, func(_ *gocbcore.StoreResult, err error) { ch <- err })
	if err != nil {
		return fmt.Errorf("dispatch: %w", err)
	}
	select {
	case err := <-ch:
		return err
	case <-time.After(rbOpTimeout + 5*time.Second):
		return errRBNoCallback
	}
}

// get reads key: a miss is an absent value, not an error.
func (w *rbWorkload) get(key string) (rbValue, error) {
	type result struct {
		v   rbValue
		err error
	}
	ch := make(chan result, 1)
	_, err := w.agent.Get(gocbcore.GetOptions{
		Key: []byte(key), Deadline: time.Now().Add(rbOpTimeout),
	}, func(res *gocbcore.GetResult, err error) {
		switch {
		case errors.Is(err, gocbcore.ErrDocumentNotFound):
			ch <- result{}
		case err != nil:
			ch <- result{err: err}
		default:
			ch <- result{v: rbValue{present: true, value: string(res.Value)}}
		}
	})
	if err != nil {
		return rbValue{}, fmt.Errorf("dispatch: %w", err)
	}
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(rbOpTimeout + 5*time.Second):
		return rbValue{}, errRBNoCallback
	}
}

// record counts an operation and its error, if any, by phase and kind, and
// returns the kind.
func (w *rbWorkload) record(op string, err error) string {
	p := w.phase.Load()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.opCount[p][op]++
	if err == nil {
		return ""
	}
	kind := w.kind(err)
	key := op + ": " + kind
	w.errCount[p][key]++
	if len(w.errSamples[key]) < 3 {
		w.errSamples[key] = append(w.errSamples[key], fmt.Sprintf("[%s %s] %.400s", rbPhaseNames[p], time.Now().Format("15:04:05.000"), err))
	}
	return kind
}

// kind is rbErrKind, telling apart the connection closures that the
// leaving node causes.
func (w *rbWorkload) kind(err error) string {
	kind := rbErrKind(err)
	switch {
	case rbConnKinds[kind] && w.leavingKV != "" && rbDispatchedTo(err) == w.leavingKV:
		kind += rbByLeaver
	case kind == "memdclient closed" && w.phase.Load() == rbPhaseLeave:
		kind += rbWhileLeaving
	}
	return kind
}

// Operations can fail because the leaving node closes its connections: one
// sent to it (EOF, or a reset or broken pipe while gocbcore writes, with the
// node as the last dispatched-to address), or one queued for its
// connection, not yet sent (gocbcore's ErrMemdClientClosed carries no
// address: it is attributed to the leave when it happens while node1
// leaves). gocbcore classifies these as retryable (SOCKET_NOT_AVAILABLE,
// MEMD_WRITE_FAILURE for a Get) but its default fail-fast strategy does not
// retry them. kind marks them with these suffixes.
const (
	rbByLeaver     = " by the leaving node"
	rbWhileLeaving = " while node1 left"
)

// rbConnKinds are the kinds of a connection that failed under an operation.
var rbConnKinds = map[string]bool{"socket closed": true, "connection reset": true, "broken pipe": true}

// rbDispatchedTo is the address gocbcore last sent the failed operation to.
func rbDispatchedTo(err error) string {
	var kv *gocbcore.KeyValueError
	if errors.As(err, &kv) {
		return kv.LastDispatchedTo
	}
	var te *gocbcore.TimeoutError
	if errors.As(err, &te) {
		return te.LastDispatchedTo
	}
	return ""
}

// rbAllowedKinds are the error kinds the workload may meet: what the
// issue allows a vbucket-aware client during a rebalance, a brief
// temporary failure (0x86) or busy; NOT_MY_VBUCKET the agent retries
// itself. Timeouts and connections closing under operations are failures:
// a leaving node stays in the map, holding nothing, until it has gone, so
// clients keep their connection to it while they retry elsewhere.
var rbAllowedKinds = map[string]bool{
	"temporary failure": true, "busy": true,
}

// rbErrKind names the kind of a gocbcore error.
func rbErrKind(err error) string {
	for _, k := range []struct {
		err  error
		name string
	}{
		{gocbcore.ErrAmbiguousTimeout, "ambiguous timeout"},
		{gocbcore.ErrUnambiguousTimeout, "unambiguous timeout"},
		{gocbcore.ErrTimeout, "timeout"},
		{gocbcore.ErrTemporaryFailure, "temporary failure"},
		{gocbcore.ErrBusy, "busy"},
		{gocbcore.ErrOverload, "overload"},
		{gocbcore.ErrNotMyVBucket, "not my vbucket"},
		{gocbcore.ErrSocketClosed, "socket closed"},
		{syscall.ECONNRESET, "connection reset"},
		{syscall.EPIPE, "broken pipe"},
		{gocbcore.ErrMemdClientClosed, "memdclient closed"},
		{gocbcore.ErrShutdown, "shutdown"},
		{gocbcore.ErrRequestCanceled, "request canceled"},
		{gocbcore.ErrServiceNotAvailable, "service not available"},
		{gocbcore.ErrInternalServerFailure, "internal server failure"},
		{gocbcore.ErrDocumentNotFound, "document not found"},
		{gocbcore.ErrCliInternalError, "client internal error"},
		{errRBNoCallback, "no callback"},
	} {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return fmt.Sprintf("other (%T)", err)
}

// report logs the workload's figures and fails the test for wrong values
// and errors of kinds not allowed.
func (w *rbWorkload) report(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	took := w.ended.Sub(w.began)
	var lines []string
	totalOps, totalErrs := 0, 0
	bad := map[string]int{}
	for p := range rbPhases {
		ops := w.opCount[p]["Set"] + w.opCount[p]["Get"]
		errs := 0
		var kinds []string
		for _, k := range slices.Sorted(maps.Keys(w.errCount[p])) {
			n := w.errCount[p][k]
			errs += n
			kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
			if kind := k[strings.Index(k, ": ")+2:]; !rbAllowedKinds[kind] {
				bad[k] += n
			}
		}
		totalOps += ops
		totalErrs += errs
		lines = append(lines, fmt.Sprintf("%-18s %6d ops (%d Sets, %d Gets), %d errors%s",
			rbPhaseNames[p]+":", ops, w.opCount[p]["Set"], w.opCount[p]["Get"], errs, rbBracket(kinds)))
	}
	t.Logf("workload: %d ops in %v (%.0f ops/s), %d errors, %d wrong values; budget %d ops%s\n  %s",
		totalOps, took.Round(time.Millisecond), float64(totalOps)/took.Seconds(), totalErrs, w.wrongCount, rbMaxOps,
		map[bool]string{true: " (exhausted before the test stopped it)", false: ""}[w.exhausted],
		strings.Join(lines, "\n  "))
	for _, k := range slices.Sorted(maps.Keys(w.errSamples)) {
		t.Logf("%s, first errors:\n  %s", k, strings.Join(w.errSamples[k], "\n  "))
	}
	if len(w.unacked) > 0 {
		t.Logf("reads that found the value of a Set that had failed (by the Set's error kind): %v", w.unacked)
	}
	if w.wrongCount > 0 {
		t.Errorf("%d wrong values read (first %d):\n  %s", w.wrongCount, len(w.wrong), strings.Join(w.wrong, "\n  "))
	}
	if len(bad) > 0 {
		t.Errorf("errors of kinds not allowed (not timeouts, temporary failures or the leaving node closing connections): %v", bad)
	}
	for p := range rbPhases {
		if w.pairs[p] == 0 {
			t.Errorf("the workload did no Set+Get pair while %s (op budget %d exhausted: %v)", rbPhaseNames[p], rbMaxOps, w.exhausted)
		}
	}
}

// checkFinal reads every key through the agent once the workload has
// stopped: each must hold its last acknowledged value (or the value of a
// failed Set after it, which is logged). A read failing with an allowed
// error is retried up to rbFinalTries times.
func (w *rbWorkload) checkFinal(t *testing.T, v *clusterView, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var wrong, unreadable, fromFailed []string
	tries := 0
	for _, k := range w.keys {
		want := slices.Clone(k.candidates)
		for try := 1; ; try++ {
			tries++
			got, err := w.get(k.name)
			got.at = time.Now()
			if err != nil {
				kind := w.kind(err)
				if try < rbFinalTries && rbAllowedKinds[kind] && time.Now().Before(deadline) {
					select { // back off before the next try
					case <-t.Context().Done():
						t.Fatal(t.Context().Err())
					case <-time.After(100 * time.Millisecond):
					}
					continue
				}
				unreadable = append(unreadable, fmt.Sprintf("%s: %d tries, last %s: %.300s", k.name, try, kind, err))
				break
			}
			switch i := k.observe(got); {
			case i < 0:
				vb := vbucketOf([]byte(k.name), v.VBuckets)
				wrong = append(wrong, fmt.Sprintf("%s (vb %d, now at %s): %s, want %s", k.name, vb, v.owners(vb), got, want[0]))
			case i > 0 || !want[0].acked:
				fromFailed = append(fromFailed, fmt.Sprintf("%s: %s; last acknowledged %s", k.name, want[i], want[0]))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("final reads: out of time after %v at key %s", timeout, k.name)
			break
		}
	}
	t.Logf("final reads: %d keys in %d Gets; %d wrong, %d unreadable, %d holding a failed Set's value",
		len(w.keys), tries, len(wrong), len(unreadable), len(fromFailed))
	if len(fromFailed) > 0 {
		t.Logf("keys holding the value of a Set that failed after their last acknowledged one:\n  %s",
			strings.Join(fromFailed[:min(len(fromFailed), 10)], "\n  "))
	}
	if len(wrong) > 0 {
		t.Errorf("final reads: %d keys do not hold their last acknowledged value:\n  %s", len(wrong), strings.Join(wrong[:min(len(wrong), 20)], "\n  "))
	}
	if len(unreadable) > 0 {
		t.Errorf("final reads: %d keys unreadable:\n  %s", len(unreadable), strings.Join(unreadable[:min(len(unreadable), 20)], "\n  "))
	}
}

func rbBracket(items []string) string {
	if len(items) == 0 {
		return ""
	}
	return " [" + strings.Join(items, ", ") + "]"
}
