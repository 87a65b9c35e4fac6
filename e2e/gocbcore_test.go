//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gocbcore "github.com/couchbase/gocbcore/v10"
)

const (
	// gocbcoreOps is how many Sets, then Gets, the agent performs.
	gocbcoreOps = 10_000
	// gocbcoreInFlight bounds the operations outstanding at once.
	gocbcoreInFlight = 128
	// gocbcoreOpTimeout is each operation's deadline.
	gocbcoreOpTimeout = 10 * time.Second
	// gocbcoreReadyTimeout bounds the agent's bootstrap.
	gocbcoreReadyTimeout = 30 * time.Second
)

// TestClusterGocbcore bootstraps an unmodified gocbcore v10 agent, the core
// of Couchbase's Go SDK, from one node's memcached address only (CCCP: HELLO,
// GET_ERROR_MAP, SELECT_BUCKET, GET_CLUSTER_CONFIG), with its default
// fail-fast retry strategy, which still retries NOT_MY_VBUCKET. The agent
// must learn the 3-node map and send every key to its owner: 10,000 Sets and
// 10,000 Gets, all without error and every value and flags read back as
// written. Keys it wrote are then read through a node by a legacy client,
// which the node forwards. It runs with empty credentials (no SASL) seeded
// with node0, then with SASL PLAIN (any credentials open a node without
// -auth-file) seeded with node1.
func TestClusterGocbcore(t *testing.T) {
	nodes, view := startCluster(t, 3)
	t.Run("no credentials", func(t *testing.T) {
		runGocbcore(t, nodes, view, 0, gocbcore.SecurityConfig{Auth: gocbcore.PasswordAuthProvider{}}, gocbcoreOps)
	})
	t.Run("PLAIN", func(t *testing.T) {
		runGocbcore(t, nodes, view, 1, gocbcore.SecurityConfig{
			Auth:           gocbcore.PasswordAuthProvider{Username: "e2e", Password: "secret"},
			AuthMechanisms: []gocbcore.AuthMechanism{gocbcore.PlainAuthMechanism},
		}, gocbcoreOps/10)
	})
}

// runGocbcore runs one agent with security against the cluster, seeded with
// the memcached address of nodes[seed] only: ops Sets, ops Gets, then checks
// of its map and legacy reads of its keys.
func runGocbcore(t *testing.T, nodes []*clusterNode, view *clusterView, seed int, security gocbcore.SecurityConfig, ops int) {
	captureGocbcoreLog(t)
	seedAddr := connectAddr(t, nodes[seed].kv) // the tap sees the bootstrap
	agent, err := gocbcore.CreateAgent(&gocbcore.AgentConfig{
		BucketName:     "default",
		UserAgent:      "vbcache-e2e",
		SeedConfig:     gocbcore.SeedConfig{MemdAddrs: []string{seedAddr}},
		SecurityConfig: security,
		KVConfig:       gocbcore.KVConfig{ConnectTimeout: 5 * time.Second, ServerWaitBackoff: 500 * time.Millisecond},
	})
	if err != nil {
		t.Fatalf("CreateAgent: %v", err)
	}
	t.Cleanup(func() {
		if err := agent.Close(); err != nil {
			t.Errorf("agent.Close: %v", err)
		}
	})
	waitAgentReady(t, agent)

	suffix := strconv.FormatUint(rand.Uint64(), 36)
	key := func(i int) []byte { return fmt.Appendf(nil, "gocb-%s-%d", suffix, i) }
	value := func(i int) []byte {
		unit := fmt.Sprintf("v%d:", i)
		size := 1 + i%700
		if i%997 == 0 {
			size = 64 << 10
		}
		return []byte(strings.Repeat(unit, size/len(unit)+1)[:size])
	}

	start := time.Now()
	errs := runAgentOps(t, "Set", ops, func(i int, done func(error)) error {
		_, err := agent.Set(gocbcore.SetOptions{
			Key: key(i), Value: value(i), Flags: uint32(i), Deadline: time.Now().Add(gocbcoreOpTimeout),
		}, func(_ *gocbcore.StoreResult, err error) { done(err) })
		return err
	})
	t.Logf("%d Sets in %v", ops, time.Since(start).Round(time.Millisecond))
	if errs > 0 {
		t.Fatalf("%d of %d Sets failed", errs, ops)
	}

	start = time.Now()
	errs = runAgentOps(t, "Get", ops, func(i int, done func(error)) error {
		_, err := agent.Get(gocbcore.GetOptions{
			Key: key(i), Deadline: time.Now().Add(gocbcoreOpTimeout),
		}, func(res *gocbcore.GetResult, err error) {
			switch {
			case err != nil:
				done(err)
			case !bytes.Equal(res.Value, value(i)):
				done(fmt.Errorf("value %d bytes %.40q, want %d bytes %.40q", len(res.Value), res.Value, len(value(i)), value(i)))
			case res.Flags != uint32(i):
				done(fmt.Errorf("flags %#x, want %#x", res.Flags, uint32(i)))
			default:
				done(nil)
			}
		})
		return err
	})
	t.Logf("%d Gets in %v", ops, time.Since(start).Round(time.Millisecond))
	if errs > 0 {
		t.Errorf("%d of %d Gets failed", errs, ops)
	}

	checkAgentMap(t, agent, nodes, view)

	// The same keys through a legacy connection (no HELLO, vbucket 0) to the
	// last node: it must hash and forward.
	c, err := dialMemd(nodes[len(nodes)-1].kv)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var bad []string
	for i := 0; i < ops; i += 50 {
		r, err := c.do(opGet, 0, key(i), nil, nil)
		if err != nil {
			t.Fatalf("legacy GET %s: %v", key(i), err)
		}
		if r.status != statusOK || !bytes.Equal(r.value, value(i)) {
			bad = append(bad, fmt.Sprintf("%s: status %s, %d bytes", key(i), statusName(r.status), len(r.value)))
		}
	}
	if len(bad) > 0 {
		t.Errorf("legacy GETs through %s of keys gocbcore set: %d wrong:\n  %s",
			nodes[len(nodes)-1].name, len(bad), strings.Join(bad[:min(len(bad), 10)], "\n  "))
	}
}

// waitAgentReady waits, bounded by gocbcoreReadyTimeout, until the agent has
// bootstrapped and connected to the KV service.
func waitAgentReady(t *testing.T, agent *gocbcore.Agent) {
	t.Helper()
	ready := make(chan error, 1)
	start := time.Now()
	_, err := agent.WaitUntilReady(time.Now().Add(gocbcoreReadyTimeout),
		gocbcore.WaitUntilReadyOptions{ServiceTypes: []gocbcore.ServiceType{gocbcore.MemdService}},
		func(_ *gocbcore.WaitUntilReadyResult, err error) { ready <- err })
	if err != nil {
		t.Fatalf("WaitUntilReady: %v", err)
	}
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("agent not ready: %v", err)
		}
	case <-time.After(gocbcoreReadyTimeout + 5*time.Second):
		t.Fatalf("WaitUntilReady did not call back within %v", gocbcoreReadyTimeout+5*time.Second)
	}
	t.Logf("agent ready after %v", time.Since(start).Round(time.Millisecond))
}

// runAgentOps runs op(0) .. op(n-1) with at most gocbcoreInFlight
// outstanding. op starts one operation and returns its dispatch error; if it
// returns nil it must arrange for done to be called exactly once. It returns
// how many failed, logging the first few errors, and fails the test if the
// operations stall.
func runAgentOps(t *testing.T, what string, n int, op func(i int, done func(error)) error) int {
	t.Helper()
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex // guards failed and shown
		failed int
		shown  []string
	)
	sem := make(chan struct{}, gocbcoreInFlight)
	finish := func(i int, err error) {
		if err != nil {
			mu.Lock()
			failed++
			if len(shown) < 20 {
				shown = append(shown, fmt.Sprintf("%s #%d: %v", what, i, err))
			}
			mu.Unlock()
		}
		<-sem
		wg.Done()
	}
	stall := 2 * gocbcoreOpTimeout // longer than any operation may take
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-time.After(stall):
			t.Fatalf("%s: no operation completed for %v with %d outstanding (%d started)", what, stall, gocbcoreInFlight, i)
		}
		wg.Add(1)
		if err := op(i, func(err error) { finish(i, err) }); err != nil {
			finish(i, fmt.Errorf("dispatch: %w", err))
		}
	}
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	select {
	case <-all:
	case <-time.After(stall):
		t.Fatalf("%s: operations still outstanding %v after the last was started", what, stall)
	}
	if len(shown) > 0 {
		t.Logf("%s errors (first %d of %d):\n  %s", what, len(shown), failed, strings.Join(shown, "\n  "))
	}
	return failed
}

// checkAgentMap compares the agent's config with the cluster's: 3 servers,
// the number of vbuckets, and, when the revs match, the owner of every
// vbucket (the agent's server indexes follow the config's serverList, which
// must be in the order of /cluster's map servers).
func checkAgentMap(t *testing.T, agent *gocbcore.Agent, nodes []*clusterNode, view *clusterView) {
	t.Helper()
	snap, err := agent.ConfigSnapshot()
	if err != nil {
		t.Errorf("ConfigSnapshot: %v", err)
		return
	}
	if n, _ := snap.NumServers(); n != len(nodes) {
		t.Errorf("the agent knows %d KV servers, want %d", n, len(nodes))
	}
	if n, err := snap.NumVbuckets(); err != nil || n != view.VBuckets {
		t.Errorf("the agent's map has %d vbuckets (err %v), /cluster says %d", n, err, view.VBuckets)
	}
	now, err := getCluster(t.Context(), nodes[0].http)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	t.Logf("agent config rev %d; /cluster rev %d", snap.RevID(), now.Rev)
	if snap.RevID() != now.Rev {
		return // the map moved on since: no vbucket-by-vbucket comparison
	}
	var diff []string
	for vb, row := range now.Map.VBuckets {
		got, err := snap.VbucketToServer(uint16(vb), 0)
		if err != nil || got != row[0] {
			diff = append(diff, fmt.Sprintf("vb %d: agent server %d (err %v), /cluster %d", vb, got, err, row[0]))
		}
	}
	if len(diff) > 0 {
		t.Errorf("at rev %d the agent and /cluster disagree on %d active vbuckets:\n  %s",
			now.Rev, len(diff), strings.Join(diff[:min(len(diff), 10)], "\n  "))
	}
}

// gocbcoreLog keeps gocbcore's last log lines (debug and more severe), to be
// logged when a test fails. gocbcore's logger is a process-wide setting that
// its goroutines read without synchronization, so it is installed once,
// before the first agent, and never replaced.
type gocbcoreLog struct {
	mu    sync.Mutex // guards lines
	lines []string   // the last gocbcoreLogLines lines, oldest first
}

const gocbcoreLogLines = 300

var (
	gocbLog     = &gocbcoreLog{}
	gocbLogOnce sync.Once
)

func (l *gocbcoreLog) Log(level gocbcore.LogLevel, _ int, format string, v ...any) error {
	if level > gocbcore.LogDebug {
		return nil
	}
	line := fmt.Sprintf("%s %d "+format, append([]any{time.Now().Format("15:04:05.000"), level}, v...)...)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == gocbcoreLogLines {
		l.lines = slices.Delete(l.lines, 0, 1)
	}
	l.lines = append(l.lines, line)
	return nil
}

// captureGocbcoreLog starts keeping gocbcore's log for t; if t fails, the
// last lines are logged in t.Cleanup.
func captureGocbcoreLog(t *testing.T) {
	gocbLogOnce.Do(func() { gocbcore.SetLogger(gocbLog) })
	gocbLog.mu.Lock()
	gocbLog.lines = nil
	gocbLog.mu.Unlock()
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		gocbLog.mu.Lock()
		defer gocbLog.mu.Unlock()
		t.Logf("gocbcore log, last %d lines (level 0 error .. 3 debug):\n%s", len(gocbLog.lines), strings.Join(gocbLog.lines, "\n"))
	})
}
