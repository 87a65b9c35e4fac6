package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"strings"
	"sync"
	"testing"
	"time"

	"vbcache/protocol"
)

// crcVBucket is the Couchbase key hash, written out here so that the tests
// check loadgen's use of the vbucket package against the definition.
func crcVBucket(key []byte, n int) int {
	return int((crc32.ChecksumIEEE(key)>>16)&0x7fff) & (n - 1)
}

// testConfig returns a bucket config JSON of n vbuckets over servers, where
// vbucket vb is active on servers[owner(vb)], with one replica on the next
// server.
func testConfig(t *testing.T, rev int64, servers []string, n int, owner func(vb int) int, forward bool) []byte {
	t.Helper()
	rows := make([][]int, n)
	for vb := range rows {
		a := owner(vb)
		rows[vb] = []int{a, (a + 1) % len(servers)}
	}
	m := map[string]any{
		"hashAlgorithm": "CRC",
		"numReplicas":   1,
		"serverList":    servers,
		"vBucketMap":    rows,
	}
	if forward {
		m["vBucketMapForward"] = rows
	}
	b, err := json.Marshal(map[string]any{"rev": rev, "name": "default", "vBucketServerMap": m})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseConfigAndOwnedBy(t *testing.T) {
	servers := []string{"$HOST:11210", "127.0.0.1:11211", "127.0.0.1:11212"}
	owner := func(vb int) int { return vb % 3 }
	c, err := parseConfig(testConfig(t, 7, servers, 64, owner, false), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.VBucketServerMap.ServerList[0]; got != "127.0.0.1:11210" {
		t.Errorf("$HOST:11210 became %q, want 127.0.0.1:11210", got)
	}
	for i, addr := range []string{"127.0.0.1:11210", "localhost:11211", "127.0.0.1:11212"} {
		owned, err := c.ownedBy(addr)
		if err != nil {
			t.Fatalf("ownedBy(%s): %v", addr, err)
		}
		if len(owned) != 64 {
			t.Fatalf("ownedBy(%s): %d vbuckets, want 64", addr, len(owned))
		}
		for vb, o := range owned {
			if o != (vb%3 == i) {
				t.Errorf("ownedBy(%s)[%d] = %v, want %v", addr, vb, o, vb%3 == i)
			}
		}
	}
	if _, err := c.ownedBy("127.0.0.1:9999"); err == nil || !strings.Contains(err.Error(), "not in the cluster map") {
		t.Errorf("unknown owner: err %v", err)
	}

	// A server that holds only replicas owns no key.
	c, err = parseConfig(testConfig(t, 8, servers, 64, func(int) int { return 0 }, false), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ownedBy("127.0.0.1:11211"); err == nil || !strings.Contains(err.Error(), "no vbucket") {
		t.Errorf("owner of replicas only: err %v", err)
	}

	// Ownership is about to change while a forward map is out.
	c, err = parseConfig(testConfig(t, 9, servers, 64, owner, true), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ownedBy("127.0.0.1:11211"); err == nil || !strings.Contains(err.Error(), "rebalanced") {
		t.Errorf("forward map: err %v", err)
	}

	for name, bad := range map[string]string{
		"not JSON":        `{"rev":`,
		"no vbuckets":     `{"rev":1,"vBucketServerMap":{"serverList":["a:1"],"vBucketMap":[]}}`,
		"3 vbuckets":      `{"rev":1,"vBucketServerMap":{"serverList":["a:1"],"vBucketMap":[[0],[0],[0]]}}`,
		"other algorithm": `{"rev":1,"vBucketServerMap":{"hashAlgorithm":"KETAMA","serverList":["a:1"],"vBucketMap":[[0]]}}`,
	} {
		if _, err := parseConfig([]byte(bad), "127.0.0.1"); err == nil {
			t.Errorf("%s: parseConfig accepted %s", name, bad)
		}
	}
}

func TestSelectKeys(t *testing.T) {
	const nvb = 1024
	owned := make([]bool, nvb)
	for vb := range owned {
		owned[vb] = vb%3 == 1
	}
	const n = 5000
	ids, scanned, err := selectKeys(owned, n, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != n {
		t.Fatalf("%d keys, want %d", len(ids), n)
	}
	if scanned != uint64(ids[n-1])+1 {
		t.Errorf("scanned %d candidates, but the last key chosen is %d", scanned, ids[n-1])
	}
	// The keys are exactly the owned ones among the candidates scanned.
	next := 0
	for id := uint64(0); id < scanned; id++ {
		key := appendKey(nil, id)
		isOwned := owned[crcVBucket(key, nvb)]
		chosen := next < n && uint64(ids[next]) == id
		if isOwned != chosen {
			t.Fatalf("%s: owned %v, chosen %v", key, isOwned, chosen)
		}
		if chosen {
			next++
		}
	}
	// About a third of the candidates are owned.
	if frac := float64(n) / float64(scanned); frac < 0.25 || frac > 0.42 {
		t.Errorf("%d of %d candidates owned (%.2f), want about 1/3", n, scanned, frac)
	}

	if _, _, err := selectKeys(owned, n, 1000); err == nil {
		t.Error("selectKeys found 5000 owned keys among 1000 candidates")
	}
	if ids, _, err := selectKeys(owned, 0, 10); err != nil || len(ids) != 0 {
		t.Errorf("n=0: %v, %v", ids, err)
	}
}

// clusterFake is a memcached-binary-protocol server with an in-memory store
// that answers GET_CLUSTER_CONFIG with a fixed config and records the keys
// it is sent, so that key selection can be tested end to end.
type clusterFake struct {
	addr   string
	config []byte

	mu   sync.Mutex
	data map[string][]byte
	seen map[string]int // key: requests naming it
}

func startClusterFake(t *testing.T, config func(addr string) []byte) *clusterFake {
	t.Helper()
	f := &clusterFake{data: map[string][]byte{}, seen: map[string]int{}}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addr = listenFake(t, f.handle)
	f.config = config(f.addr)
	return f
}

// handle appends the response to req to out.
func (f *clusterFake) handle(out []byte, req *protocol.Request) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	respond := func(status protocol.Status, extras, key, value []byte) []byte {
		return protocol.AppendFrame(out, &protocol.Frame{
			Magic: protocol.MagicResponse, Opcode: req.Opcode, VBucket: uint16(status), Opaque: req.Opaque,
			Extras: extras, Key: key, Value: value,
		})
	}
	switch req.Opcode {
	case protocol.OpGetClusterConfig:
		return respond(protocol.StatusOK, nil, nil, f.config)
	case protocol.OpStat:
		out = respond(protocol.StatusOK, nil, []byte("curr_items"), []byte(fmt.Sprint(len(f.data))))
		out = respond(protocol.StatusOK, nil, []byte("evictions"), []byte("0"))
		return respond(protocol.StatusOK, nil, nil, nil)
	case protocol.OpSet, protocol.OpSetQ:
		f.seen[string(req.Key)]++
		f.data[string(req.Key)] = bytes.Clone(req.Value)
		if req.Opcode == protocol.OpSetQ {
			return out
		}
		return respond(protocol.StatusOK, nil, nil, nil)
	case protocol.OpGet:
		f.seen[string(req.Key)]++
		v, ok := f.data[string(req.Key)]
		if !ok {
			return protocol.AppendError(out, req.Opcode, protocol.StatusKeyNotFound, req.Opaque)
		}
		return respond(protocol.StatusOK, []byte{0, 0, 0, 0}, nil, v)
	case protocol.OpNoop:
		return respond(protocol.StatusOK, nil, nil, nil)
	}
	return protocol.AppendError(out, req.Opcode, protocol.StatusUnknownCommand, req.Opaque)
}

// keys returns the keys the fake was sent and the items it holds.
func (f *clusterFake) keys() (seen map[string]int, items int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	seen = make(map[string]int, len(f.seen))
	for k, n := range f.seen {
		seen[k] = n
	}
	return seen, len(f.data)
}

func TestRunWithOwner(t *testing.T) {
	const nvb = 256
	owner := "127.0.0.1:40002" // the fake forwards nothing: it only needs to be in the map
	fake := startClusterFake(t, func(self string) []byte {
		return testConfig(t, 42, []string{"$HOST:" + strings.Split(self, ":")[1], owner, "127.0.0.1:40003"}, nvb,
			func(vb int) int { return vb * 7 % 3 }, false)
	})
	ownedVB := func(key string) bool { return crcVBucket([]byte(key), nvb)*7%3 == 1 }

	// Load mode stores exactly -items owned keys.
	cfg := DefaultConfig()
	cfg.Addr = fake.addr
	cfg.Owner = owner
	cfg.Mode = ModeLoad
	cfg.Conns = 3
	cfg.Items = 3000
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 || res.Ops != 3000 {
		t.Fatalf("load: %d errors, %d items: %v", res.Errors, res.Ops, res.ErrorSamples)
	}
	ks := res.KeySelection
	if ks == nil || ks.Owner != owner || ks.ConfigRev != 42 || ks.Candidates < 3000 {
		t.Fatalf("key selection %+v", ks)
	}
	if ks.OwnedVBuckets < nvb/3-2 || ks.OwnedVBuckets > nvb/3+2 {
		t.Errorf("owned vbuckets %d, want about %d", ks.OwnedVBuckets, nvb/3)
	}
	seen, items := fake.keys()
	if items != 3000 {
		t.Errorf("the fake holds %d items, want 3000", items)
	}
	for k := range seen {
		if !ownedVB(k) {
			t.Errorf("load sent %s, whose vbucket %s does not own", k, owner)
		}
	}

	// Run mode over the first 1000 of them: every GET hits, only owned keys
	// are named, and SET-only works too.
	for _, ratio := range []float64{0.9, 0} {
		cfg := DefaultConfig()
		cfg.Addr = fake.addr
		cfg.Owner = owner
		cfg.Conns = 2
		cfg.Depth = 4
		cfg.Keys = 1000
		cfg.GetRatio = ratio
		cfg.Prefill = false
		cfg.Warmup = 0
		cfg.Duration = 5 * time.Second
		cfg.MaxOps = 4000
		res, err := Run(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if res.Errors != 0 || res.Ops != 4000 {
			t.Fatalf("get-ratio %v: %d errors, %d ops: %v", ratio, res.Errors, res.Ops, res.ErrorSamples)
		}
		if res.GetMisses != 0 {
			t.Errorf("get-ratio %v: %d misses after the load", ratio, res.GetMisses)
		}
		if ratio == 0 && (res.Gets != 0 || res.Sets != 4000) {
			t.Errorf("get-ratio 0: %d gets, %d sets; want only sets", res.Gets, res.Sets)
		}
	}
	seen, items = fake.keys()
	if items != 3000 {
		t.Errorf("the fake holds %d items after the mixed runs, want still 3000", items)
	}
	for k := range seen {
		if !ownedVB(k) {
			t.Errorf("run sent %s, whose vbucket %s does not own", k, owner)
		}
	}

	// An owner outside the map is refused before any load.
	cfg = DefaultConfig()
	cfg.Addr = fake.addr
	cfg.Owner = "127.0.0.1:1"
	if _, err := Run(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "not in the cluster map") {
		t.Errorf("owner outside the map: err %v", err)
	}
}

func TestStatsMode(t *testing.T) {
	fake := startClusterFake(t, func(string) []byte { return nil })
	var stdout, stderr bytes.Buffer
	if code := mainErr([]string{"-mode", "stats", "-addr", fake.addr, "-json"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var got map[string]string
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, stdout.String())
	}
	if got["evictions"] != "0" || got["curr_items"] != "0" {
		t.Errorf("stats %v", got)
	}

	stdout.Reset()
	if code := mainErr([]string{"-mode", "stats", "-addr", fake.addr}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if want := "curr_items 0\nevictions 0\n"; stdout.String() != want {
		t.Errorf("text output %q, want %q", stdout.String(), want)
	}

	if code := mainErr([]string{"-mode", "stats", "-addr", "10.1.2.3:11211"}, &stdout, &stderr); code != 2 {
		t.Errorf("non-loopback address: exit %d, want 2", code)
	}
}

func TestStatsModeMemcached(t *testing.T) {
	addr := startMemcached(t)
	stats, err := fetchStats(context.Background(), addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, s := range stats {
		names[s.Name] = true
	}
	for _, want := range []string{"pid", "curr_items", "evictions", "limit_maxbytes"} {
		if !names[want] {
			t.Errorf("memcached's STAT lacks %s: %v", want, stats)
		}
	}
}
