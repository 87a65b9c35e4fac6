//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Dashboard tests: the page every node serves at / on its HTTP port, loaded
// in headless Chromium (Debian's chromium, driven over the DevTools protocol
// by chromedp), read back from the DOM and checked against what the nodes
// report. Each test saves screenshots (see screenshotDir).

const (
	// browserTimeout bounds a test's whole browser session.
	browserTimeout = 3 * time.Minute
	// pageTimeout bounds a wait for the page to show something that is
	// already true of the cluster (it polls once a second).
	pageTimeout = 20 * time.Second
	// deadTimeout bounds the wait for the page to show a killed node dead:
	// memberlist's failure detection, then a poll.
	deadTimeout = 45 * time.Second
	// chromiumPackage is the Debian package that provides the browser.
	chromiumPackage = "chromium"
)

// browser is one headless Chromium with one tab.
type browser struct {
	ctx context.Context // the tab's chromedp context
	out *lockedBuffer   // the browser's stdout and stderr, and chromedp's errors

	mu       sync.Mutex // guards messages
	messages []string   // console errors and uncaught exceptions of the page

	console sync.WaitGroup // the goroutine that collects messages
}

// startBrowser starts headless Chromium with a fresh profile, bounded by
// browserTimeout; it is closed when the test ends. A missing chromium fails
// the test: scripts/test.sh installs it.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found: apt-get install %s (scripts/test.sh installs it): %v", chromiumPackage, err)
	}
	b := &browser{out: &lockedBuffer{}}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		// Without these Chromium keeps trying to reach Google's services.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1000),
		chromedp.CombinedOutput(b.out),
	}
	ctx, cancelTimeout := context.WithTimeout(context.Background(), browserTimeout)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	errorf := func(format string, args ...any) { fmt.Fprintf(b.out, "chromedp: "+format+"\n", args...) }
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithErrorf(errorf))
	b.ctx = bctx
	t.Cleanup(func() {
		cancelBrowser() // closes the browser and waits for it
		b.console.Wait()
		cancelAlloc()
		cancelTimeout()
		if t.Failed() {
			t.Logf("browser output:\n%s", b.out)
		}
	})
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("starting %s: %v\n%s", path, err, b.out)
	}
	messages := chromedp.Console(bctx)
	b.console.Go(func() { // ends with the browser
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.IsException() || m.Type == chromedp.ConsoleError {
				b.mu.Lock()
				b.messages = append(b.messages, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line))
				b.mu.Unlock()
			}
		}
	})
	return b
}

// open loads url in the tab.
func (b *browser) open(t *testing.T, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, pageTimeout)
	defer cancel()
	resp, err := chromedp.RunResponse(ctx, chromedp.Navigate(url))
	if err != nil {
		t.Fatalf("loading %s: %v", url, err)
	}
	if resp.Status != http.StatusOK {
		t.Fatalf("loading %s: status %d", url, resp.Status)
	}
	t.Logf("loaded %s in headless Chromium", url)
}

// takeConsole returns the errors the page reported and the exceptions it
// threw since the last call.
func (b *browser) takeConsole() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.messages
	b.messages = nil
	return m
}

// checkConsole fails the test if the page reported an error or threw.
func (b *browser) checkConsole(t *testing.T) {
	t.Helper()
	if m := b.takeConsole(); len(m) > 0 {
		t.Errorf("the page logged errors:\n  %s", strings.Join(m, "\n  "))
	}
}

// dashView is what the page shows, read from its DOM.
type dashView struct {
	State     string         `json:"state"`   // live, stale or loading
	Banner    bool           `json:"banner"`  // the lost-contact banner is shown
	Renders   int            `json:"renders"` // answers from /api/dashboard drawn so far
	Rev       int64          `json:"rev"`     // map rev in the header
	Header    string         `json:"header"`  // the header line
	Members   []dashMember   `json:"members"` // the nodes table, in order
	Alive     int            `json:"alive"`   // the members card
	Hit       *float64       `json:"hit"`     // the hit rate card
	Cells     int            `json:"cells"`   // vbucket grid cells
	Owners    map[string]int `json:"owners"`  // grid cells by owner
	Moving    int            `json:"moving"`  // grid cells marked moving
	Legend    map[string]int `json:"legend"`  // active vbuckets by owner, as the legend says
	Rebalance struct {
		Moving int    `json:"moving"`
		Ready  string `json:"ready"` // servers backfilled, "" when idle
		Text   string `json:"text"`
	} `json:"rebalance"`
}

// dashMember is one row of the nodes table.
type dashMember struct {
	Name       string   `json:"name"`
	State      string   `json:"state"`      // gossip state
	Health     string   `json:"health"`     // healthy, unreachable, suspect, dead, left...
	HealthText string   `json:"healthText"` // the badge as shown
	OpsRate    *float64 `json:"opsRate"`    // nil while unknown
	Ops        *float64 `json:"ops"`
	HitRate    *float64 `json:"hitRate"`
	Active     int      `json:"active"`
}

// readDashboard reads the figures back from the data-* attributes and the
// text the page rendered.
const readDashboard = `(() => {
  const num = (row, f) => { const v = row.querySelector('[data-field="' + f + '"]').dataset.value; return v === undefined || v === '' ? null : Number(v); };
  const owners = {}, legend = {};
  const cells = document.querySelectorAll('#vbgrid .cell');
  for (const c of cells) owners[c.dataset.owner] = (owners[c.dataset.owner] || 0) + 1;
  for (const li of document.querySelectorAll('#legend [data-legend]')) legend[li.dataset.legend] = Number(li.dataset.count);
  const rb = document.getElementById('rebalance');
  return {
    state: document.body.dataset.state, banner: !document.getElementById('banner').hidden, renders: Number(document.body.dataset.renders),
    rev: Number(document.body.dataset.rev || 0), header: document.getElementById('meta').textContent,
    alive: Number(document.getElementById('c-members').dataset.alive || 0),
    hit: document.getElementById('c-hit').dataset.value ? Number(document.getElementById('c-hit').dataset.value) : null,
    members: [...document.querySelectorAll('#nodes tbody tr')].map(tr => ({
      name: tr.dataset.member, state: tr.dataset.state, health: tr.dataset.health,
      healthText: tr.querySelector('.badge').textContent,
      opsRate: num(tr, 'ops-rate'), ops: num(tr, 'ops'), hitRate: num(tr, 'hit-rate'), active: num(tr, 'active'),
    })),
    cells: cells.length, owners, legend,
    moving: document.querySelectorAll('#vbgrid .cell.moving[data-moving]').length,
    rebalance: {moving: Number(rb.dataset.moving || 0), ready: rb.dataset.ready || '', text: rb.textContent},
  };
})()`

func (b *browser) view() (*dashView, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[*dashView](readDashboard))
}

// member returns the row of the member named name, or nil.
func (v *dashView) member(name string) *dashMember {
	for i := range v.Members {
		if v.Members[i].Name == name {
			return &v.Members[i]
		}
	}
	return nil
}

func (v *dashView) String() string {
	b, _ := json.MarshalIndent(v, "", " ")
	return string(b)
}

// waitLive reads the page every 200 ms until it is live (its last poll
// succeeded) and check finds nothing wrong with it (returns ""), and
// returns that view. It fails the test after timeout with what was still
// wrong and the last view, or if the page logged an error.
func (b *browser) waitLive(t *testing.T, what string, timeout time.Duration, check func(*dashView) string) *dashView {
	t.Helper()
	v := b.waitView(t, what, timeout, func(v *dashView) string {
		if v.State != "live" {
			return "page state " + v.State
		}
		return check(v)
	})
	b.checkConsole(t)
	return v
}

// waitView reads the page every 200 ms until check finds nothing wrong
// with it (returns ""), and returns that view. It fails the test after
// timeout with what was still wrong and the last view.
func (b *browser) waitView(t *testing.T, what string, timeout time.Duration, check func(*dashView) string) *dashView {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		v, err := b.view()
		why := ""
		if err != nil {
			why = err.Error()
		} else {
			why = check(v)
		}
		if why == "" {
			t.Logf("the page shows %s (after %v)", what, time.Since(start).Round(time.Millisecond))
			return v
		}
		if time.Since(start) > timeout {
			t.Fatalf("the page did not show %s within %v: %s\nlast view: %v", what, timeout, why, v)
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-tick.C:
		}
	}
}

// screenshot saves the whole page as a PNG named name in screenshotDir.
func (b *browser) screenshot(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, pageTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(screenshotDir(t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

// screenshotDir is where the screenshots go: $VBCACHE_SCREENSHOT_DIR, or
// vbcache-screenshots in the system's temporary directory. Either is left
// in place after the run, each file overwritten by the next.
func screenshotDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("VBCACHE_SCREENSHOT_DIR")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "vbcache-screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// activeCounts returns the active vbuckets of each member that holds any,
// as /cluster reports them.
func activeCounts(v *clusterView) map[string]int {
	counts := map[string]int{}
	for _, m := range v.Members {
		if m.ActiveVBuckets > 0 {
			counts[m.Name] = m.ActiveVBuckets
		}
	}
	return counts
}

// checkGrid says what is wrong with the page's vbucket grid and legend
// against /cluster's view of the map, or "".
func checkGrid(v *dashView, c *clusterView) string {
	want := activeCounts(c)
	switch {
	case v.Rev != c.Rev:
		return fmt.Sprintf("page shows rev %d, /cluster rev %d", v.Rev, c.Rev)
	case v.Cells != c.VBuckets:
		return fmt.Sprintf("grid has %d cells, want %d", v.Cells, c.VBuckets)
	case !maps.Equal(v.Owners, want):
		return fmt.Sprintf("grid cells by owner %v, /cluster's active counts %v", v.Owners, want)
	case !maps.Equal(v.Legend, want):
		return fmt.Sprintf("legend %v, /cluster's active counts %v", v.Legend, want)
	}
	return ""
}

// legacyTraffic sets keys dash-0..n-1 through addr as a client that knows
// nothing of vbuckets (the node forwards), reads each back and asks for
// misses keys that do not exist. It returns the requests sent.
func legacyTraffic(t *testing.T, addr string, n, misses int) int {
	t.Helper()
	c, err := dialMemd(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range n {
		key := []byte(fmt.Sprintf("dash-%d", i))
		if r, err := c.do(opSet, 0, key, make([]byte, 8), []byte("value of "+string(key))); err != nil || r.status != statusOK {
			t.Fatalf("SET %s: status %#x, err %v", key, r.status, err)
		}
		if r, err := c.do(opGet, 0, key, nil, nil); err != nil || r.status != statusOK {
			t.Fatalf("GET %s: status %#x, err %v", key, r.status, err)
		}
	}
	for i := range misses {
		if _, err := c.do(opGet, 0, []byte(fmt.Sprintf("dash-missing-%d", i)), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	return 2*n + misses
}

// steadyTraffic reads keys dash-0..n-1 in a loop through addr, about 200
// a second, until the returned stop is called (also at the end of the
// test); stop waits for it and reports an error it met.
func steadyTraffic(t *testing.T, addr string, n int) (stop func()) {
	t.Helper()
	c, err := dialMemd(addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var loopErr error
	wg.Go(func() {
		defer c.Close()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			if _, err := c.do(opGet, 0, []byte(fmt.Sprintf("dash-%d", i%n)), nil, nil); err != nil {
				loopErr = err
				return
			}
		}
	})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			close(done)
			wg.Wait()
			if loopErr != nil {
				t.Errorf("steady traffic through %s: %v", addr, loopErr)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// TestDashboardCluster loads node0's dashboard against a 3-node cluster
// carrying real traffic, checks the members, the map and the counters it
// shows against what the nodes report, then SIGKILLs node2 and checks that
// the page marks it dead and redraws the map over the two survivors.
func TestDashboardCluster(t *testing.T) {
	fc := startFailoverCluster(t, 3)
	nodes := fc.nodes
	const keys, misses = 200, 50
	sent := legacyTraffic(t, nodes[1].kv, keys, misses)

	b := startBrowser(t)
	b.open(t, "http://"+nodes[0].http+"/")
	c, err := getCluster(t.Context(), nodes[0].http)
	if err != nil {
		t.Fatal(err)
	}
	v := b.waitLive(t, "3 healthy members, the map and the traffic", pageTimeout, func(v *dashView) string {
		if len(v.Members) != 3 || v.Alive != 3 {
			return fmt.Sprintf("%d members, %d alive; want 3 alive", len(v.Members), v.Alive)
		}
		var ops float64
		for i, m := range v.Members {
			if m.Name != nodes[i].name || m.Health != "healthy" || m.HealthText != "Healthy" {
				return fmt.Sprintf("row %d: %s is %s (%q); want %s healthy", i, m.Name, m.Health, m.HealthText, nodes[i].name)
			}
			if m.Ops != nil {
				ops += *m.Ops
			}
		}
		if ops < float64(sent) {
			return fmt.Sprintf("the nodes' ops add up to %v; %d requests were sent", ops, sent)
		}
		if !strings.Contains(v.Header, "served by node0") || !strings.Contains(v.Header, "coordinator "+c.Coordinator) {
			return fmt.Sprintf("header %q", v.Header)
		}
		return checkGrid(v, c)
	})
	if v.Moving != 0 || v.Rebalance.Moving != 0 || !strings.Contains(v.Rebalance.Text, "Idle") {
		t.Errorf("a settled cluster shows %d moving cells, rebalance %d moving: %q", v.Moving, v.Rebalance.Moving, v.Rebalance.Text)
	}

	stopTraffic := steadyTraffic(t, nodes[1].kv, keys)
	b.waitLive(t, "throughput and hits on some node", pageTimeout, func(v *dashView) string {
		for _, m := range v.Members {
			if m.OpsRate != nil && *m.OpsRate > 0 && m.HitRate != nil && *m.HitRate > 0 {
				return ""
			}
		}
		return "no node shows ops/s > 0 and a hit rate > 0"
	})
	b.screenshot(t, "dashboard-cluster.png")
	stopTraffic()

	fc.signal(2, syscall.SIGKILL)
	v = b.waitLive(t, "node2 dead", deadTimeout, func(v *dashView) string {
		m := v.member("node2")
		if m == nil {
			return "node2 is not listed"
		}
		if m.Health != "dead" || m.HealthText != "Dead" {
			return fmt.Sprintf("node2 is %s (%q)", m.Health, m.HealthText)
		}
		return ""
	})
	if len(v.Members) != 3 {
		t.Errorf("%d members listed after node2 died, want 3 (node2 dead)", len(v.Members))
	}
	for _, name := range []string{"node0", "node1"} {
		if m := v.member(name); m == nil || m.Health != "healthy" {
			t.Errorf("survivor %s shown as %+v", name, m)
		}
	}

	survivors := nodes[:2]
	fc.waitSettled(survivors, clusterTimeout)
	b.waitLive(t, "the map over the two survivors", pageTimeout, func(v *dashView) string {
		c, err := getCluster(t.Context(), nodes[0].http)
		if err != nil {
			return err.Error()
		}
		if len(activeCounts(c)) != 2 {
			return fmt.Sprintf("/cluster: active counts %v", activeCounts(c))
		}
		if v.Moving != 0 {
			return fmt.Sprintf("%d cells moving", v.Moving)
		}
		return checkGrid(v, c)
	})
	b.screenshot(t, "dashboard-node-dead.png")
}

// TestDashboardSingleNode: a node without -gossip shows itself alone,
// holding every vbucket.
func TestDashboardSingleNode(t *testing.T) {
	requireNode(t)
	httpAddr, err := freeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	kv := startServer(t, "-http", httpAddr)
	sent := legacyTraffic(t, kv, 20, 5)

	b := startBrowser(t)
	b.open(t, "http://"+httpAddr+"/")
	b.waitLive(t, "one healthy node holding every vbucket", pageTimeout, func(v *dashView) string {
		if len(v.Members) != 1 {
			return fmt.Sprintf("%d members", len(v.Members))
		}
		m := v.Members[0]
		switch {
		case m.Health != "healthy":
			return "the node is " + m.Health
		case m.Ops == nil || *m.Ops < float64(sent):
			return fmt.Sprintf("ops %v, %d requests were sent", m.Ops, sent)
		case v.Cells != 1024 || !maps.Equal(v.Owners, map[string]int{m.Name: 1024}):
			return fmt.Sprintf("%d cells, by owner %v", v.Cells, v.Owners)
		case !strings.Contains(v.Header, "single node"):
			return fmt.Sprintf("header %q", v.Header)
		}
		return ""
	})
	b.screenshot(t, "dashboard-single.png")
}

// TestDashboardRebalance serves the page, as the node embeds it, with a
// made-up /api/dashboard: a rebalance moving vbuckets from three servers
// to four, with two of the four ready, one member that does not answer and
// one dead, and counters that grow by a known amount each poll. It checks
// the moving cells, the progress and the rates the page computes.
func TestDashboardRebalance(t *testing.T) {
	page, err := os.ReadFile(filepath.Join(h.root, "node", "dashboard.html"))
	if err != nil {
		t.Fatal(err)
	}
	const rev, vbuckets = 9, 1024
	names := []string{"node0", "node1", "node2", "node3"}
	var servers []map[string]string
	for i, name := range names {
		servers = append(servers, map[string]string{"name": name, "kv": fmt.Sprintf("127.0.0.1:%d", 11211+i)})
	}
	rows, forward := make([][]int, vbuckets), make([][]int, vbuckets)
	wantOwners, wantMoving := map[string]int{}, 0
	for vb := range vbuckets {
		rows[vb] = []int{vb % 3, (vb + 1) % 3}
		forward[vb] = []int{vb % 4, (vb + 1) % 4}
		wantOwners[names[vb%3]]++
		if !slices.Equal(rows[vb], forward[vb]) {
			wantMoving++
		}
	}
	members := []map[string]any{}
	for i, name := range append(names, "node4") {
		m := map[string]any{"name": name, "state": "alive", "kv": fmt.Sprintf("127.0.0.1:%d", 11211+i),
			"gossip": fmt.Sprintf("127.0.0.1:%d", 12211+i), "rev": rev, "ready": rev - 1}
		if i < 2 {
			m["ready"] = rev
		}
		if i < 3 {
			m["active_vbuckets"] = wantOwners[name]
		}
		if name == "node4" {
			m["state"] = "dead"
		}
		members = append(members, m)
	}

	var mu sync.Mutex // guards polls
	polls := 0
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(page)
	})
	mux.HandleFunc("GET /api/dashboard", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		polls++
		p := int64(polls)
		mu.Unlock()
		stats := map[string]any{
			"node3": map[string]string{"error": "context deadline exceeded"},
			"node4": map[string]string{"error": "not asked: the member is dead"},
		}
		for i, name := range names[:3] {
			k := int64(i + 1)
			stats[name] = map[string]any{"stats": map[string]any{
				"node": name, "time_ms": 1_700_000_000_000 + 1000*p, "uptime_s": 100 + p,
				"ops": 1000 * k * p, "cmd_get": 800 * k * p, "get_hits": 600*k*p - 400*k, "cmd_set": 200 * k * p,
				"curr_items": 5000 * k, "bytes": k << 20, "limit_maxbytes": 64 << 20, "curr_connections": 3,
				"progress": map[string]any{"items_sent": 100 * p, "bytes_sent": 10_000 * p},
			}}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"node": "node0", "time_ms": time.Now().UnixMilli(),
			"cluster": map[string]any{
				"node": "node0", "rev": rev, "vbuckets": vbuckets, "replicas": 1, "coordinator": "node0",
				"members":  members,
				"map":      map[string]any{"rev": rev, "replicas": 1, "servers": servers, "vbuckets": rows, "forward": forward},
				"progress": map[string]any{"rev": rev, "vbuckets_moving": wantMoving},
			},
			"stats": stats,
		})
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	b := startBrowser(t)
	b.open(t, srv.URL+"/")
	b.waitLive(t, "the rebalance, the rates and every member's health", pageTimeout, func(v *dashView) string {
		if v.Renders < 2 {
			return "fewer than two polls drawn"
		}
		health := map[string]string{}
		for _, m := range v.Members {
			health[m.Name] = m.Health
		}
		want := map[string]string{"node0": "healthy", "node1": "healthy", "node2": "healthy", "node3": "unreachable", "node4": "dead"}
		if !maps.Equal(health, want) {
			return fmt.Sprintf("health %v, want %v", health, want)
		}
		for i, name := range names[:3] {
			m := v.member(name)
			if rate := float64(1000 * (i + 1)); m.OpsRate == nil || *m.OpsRate != rate {
				return fmt.Sprintf("%s: ops/s %v, want %v", name, m.OpsRate, rate)
			}
			if m.HitRate == nil || *m.HitRate != 0.75 {
				return fmt.Sprintf("%s: hit rate %v, want 0.75", name, m.HitRate)
			}
		}
		// Each node misses 400 more gets at the start than since: the
		// card, like the table, shows the last interval's rate.
		if v.Hit == nil || *v.Hit != 0.75 {
			return fmt.Sprintf("hit rate card %v, want the last interval's 0.75", v.Hit)
		}
		switch {
		case v.Cells != vbuckets || !maps.Equal(v.Owners, wantOwners):
			return fmt.Sprintf("%d cells, by owner %v; want %v", v.Cells, v.Owners, wantOwners)
		case v.Moving != wantMoving || v.Rebalance.Moving != wantMoving:
			return fmt.Sprintf("%d cells and rebalance panel %d moving, want %d", v.Moving, v.Rebalance.Moving, wantMoving)
		case v.Rebalance.Ready != "2" || !strings.Contains(v.Rebalance.Text, "2 of 4 nodes have backfilled"):
			return fmt.Sprintf("rebalance panel: ready %q, %q", v.Rebalance.Ready, v.Rebalance.Text)
		}
		return ""
	})
	b.screenshot(t, "dashboard-rebalance.png")

	// The node serving the page goes away: the page says so.
	srv.Close()
	b.waitView(t, "that it lost contact", pageTimeout, func(v *dashView) string {
		if v.State != "stale" || !v.Banner {
			return fmt.Sprintf("state %s, banner shown %v", v.State, v.Banner)
		}
		return ""
	})
	b.screenshot(t, "dashboard-stale.png")
	for _, m := range b.takeConsole() {
		if !strings.Contains(m, "/api/dashboard") && !strings.Contains(m, "Failed to fetch") {
			t.Errorf("the page logged an error other than its failed polls: %s", m)
		}
	}
}
