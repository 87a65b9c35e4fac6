package vbucket

import (
	"bytes"
	"encoding/json"
	"net"
	"slices"
	"strconv"
	"testing"
)

// parsedConfig holds the fields of the bucket config that gocbcore v10, the
// npm couchbase SDK and go-couchbase read.
type parsedConfig struct {
	Rev                int64    `json:"rev"`
	Name               string   `json:"name"`
	UUID               string   `json:"uuid"`
	URI                string   `json:"uri"`
	StreamingURI       string   `json:"streamingUri"`
	BucketType         string   `json:"bucketType"`
	NodeLocator        string   `json:"nodeLocator"`
	BucketCapabilities []string `json:"bucketCapabilities"`
	Nodes              []struct {
		Hostname     string         `json:"hostname"`
		Ports        map[string]int `json:"ports"`
		CouchAPIBase string         `json:"couchApiBase"`
	} `json:"nodes"`
	NodesExt []struct {
		Hostname string         `json:"hostname"`
		ThisNode bool           `json:"thisNode"`
		Services map[string]int `json:"services"`
	} `json:"nodesExt"`
	VBucketServerMap struct {
		HashAlgorithm     string   `json:"hashAlgorithm"`
		NumReplicas       int      `json:"numReplicas"`
		ServerList        []string `json:"serverList"`
		VBucketMap        [][]int  `json:"vBucketMap"`
		VBucketMapForward [][]int  `json:"vBucketMapForward"`
	} `json:"vBucketServerMap"`
}

func parseConfig(t *testing.T, b []byte) parsedConfig {
	t.Helper()
	var c parsedConfig
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("config does not parse: %v\n%s", err, b)
	}
	return c
}

func TestClientConfig(t *testing.T) {
	m, err := Build(42, []Server{
		{Name: "node0", KV: "127.0.0.1:11210", HTTP: "127.0.0.1:18091"},
		{Name: "node1", KV: "127.0.0.1:11211"},
		{Name: "node2", KV: "127.0.0.1:11212", HTTP: "127.0.0.1:18093"},
	}, 64, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, self := range []int{-1, 0, 1, 2} {
		t.Run("self="+strconv.Itoa(self), func(t *testing.T) {
			b := m.ClientConfig(self)
			if !bytes.Equal(b, m.ClientConfig(self)) {
				t.Fatal("two calls render different bytes")
			}
			c := parseConfig(t, b)
			if c.Rev != 42 || c.Name != "default" || c.UUID == "" || c.NodeLocator != "vbucket" || c.BucketType != "membase" {
				t.Errorf("rev %d, name %q, uuid %q, nodeLocator %q, bucketType %q", c.Rev, c.Name, c.UUID, c.NodeLocator, c.BucketType)
			}
			if c.URI != "/pools/default/buckets/default" || c.StreamingURI != "/pools/default/bucketsStreaming/default" {
				t.Errorf("uri %q, streamingUri %q", c.URI, c.StreamingURI)
			}
			if !slices.Contains(c.BucketCapabilities, "cccp") || !slices.Contains(c.BucketCapabilities, "nodesExt") {
				t.Errorf("bucketCapabilities %v", c.BucketCapabilities)
			}
			sm := c.VBucketServerMap
			if sm.HashAlgorithm != "CRC" || sm.NumReplicas != 1 {
				t.Errorf("hashAlgorithm %q, numReplicas %d", sm.HashAlgorithm, sm.NumReplicas)
			}
			if want := []string{"127.0.0.1:11210", "127.0.0.1:11211", "127.0.0.1:11212"}; !slices.Equal(sm.ServerList, want) {
				t.Errorf("serverList %v, want %v", sm.ServerList, want)
			}
			if !slices.EqualFunc(sm.VBucketMap, m.VBuckets, slices.Equal) {
				t.Error("vBucketMap differs from the map")
			}
			for vb, row := range sm.VBucketMap {
				if len(row) != sm.NumReplicas+1 {
					t.Fatalf("vBucketMap row %d = %v", vb, row)
				}
			}
			if sm.VBucketMapForward != nil {
				t.Error("vBucketMapForward without a forward map")
			}
			if len(c.NodesExt) != len(sm.ServerList) || len(c.Nodes) < len(sm.ServerList) {
				t.Fatalf("%d nodesExt, %d nodes for %d servers", len(c.NodesExt), len(c.Nodes), len(sm.ServerList))
			}
			wantMgmt := []int{18091, 8091, 18093}
			for i, ne := range c.NodesExt {
				kv := ne.Services["kv"]
				if got := net.JoinHostPort(ne.Hostname, strconv.Itoa(kv)); got != sm.ServerList[i] {
					t.Errorf("nodesExt[%d] is %s, serverList has %s", i, got, sm.ServerList[i])
				}
				if ne.Services["mgmt"] != wantMgmt[i] {
					t.Errorf("nodesExt[%d] mgmt %d, want %d", i, ne.Services["mgmt"], wantMgmt[i])
				}
				if ne.ThisNode != (i == self) {
					t.Errorf("nodesExt[%d].thisNode = %v with self %d", i, ne.ThisNode, self)
				}
				n := c.Nodes[i]
				if want := "127.0.0.1:" + strconv.Itoa(wantMgmt[i]); n.Hostname != want {
					t.Errorf("nodes[%d].hostname %q, want %q", i, n.Hostname, want)
				}
				if n.Ports["direct"] != kv {
					t.Errorf("nodes[%d].ports.direct %d, want %d", i, n.Ports["direct"], kv)
				}
				if want := "http://127.0.0.1:" + strconv.Itoa(wantMgmt[i]+1) + "/default"; n.CouchAPIBase != want {
					t.Errorf("nodes[%d].couchApiBase %q, want %q", i, n.CouchAPIBase, want)
				}
			}
		})
	}
}

func TestClientConfigForward(t *testing.T) {
	m := smallMap()
	m.Forward = [][]int{{1, 0}, {1, 2}, {2, 0}, {0, 2}}
	c := parseConfig(t, m.ClientConfig(0))
	if !slices.EqualFunc(c.VBucketServerMap.VBucketMapForward, m.Forward, slices.Equal) {
		t.Errorf("vBucketMapForward = %v, want %v", c.VBucketServerMap.VBucketMapForward, m.Forward)
	}
}

func TestClientConfigHosts(t *testing.T) {
	for _, tc := range []struct {
		name, kv, http       string
		serverList, hostname string // serverList entry, nodes hostname
		extHost              string
		extKV, extMgmt       int
	}{
		{"ipv4", "10.1.2.3:11210", "10.1.2.3:8000", "10.1.2.3:11210", "10.1.2.3:8000", "10.1.2.3", 11210, 8000},
		{"ipv6", "[::1]:11210", "", "[::1]:11210", "[::1]:8091", "::1", 11210, 8091},
		{"name", "cache-1.example.com:11210", "", "cache-1.example.com:11210", "cache-1.example.com:8091", "cache-1.example.com", 11210, 8091},
		{"no host", ":11210", ":9000", "$HOST:11210", "$HOST:9000", "", 11210, 9000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &Map{Rev: 1, Servers: []Server{{Name: "a", KV: tc.kv, HTTP: tc.http}}, VBuckets: [][]int{{0}}}
			c := parseConfig(t, m.ClientConfig(0))
			if got := c.VBucketServerMap.ServerList; len(got) != 1 || got[0] != tc.serverList {
				t.Errorf("serverList %v, want [%s]", got, tc.serverList)
			}
			if got := c.Nodes[0].Hostname; got != tc.hostname {
				t.Errorf("nodes hostname %q, want %q", got, tc.hostname)
			}
			ne := c.NodesExt[0]
			if ne.Hostname != tc.extHost || ne.Services["kv"] != tc.extKV || ne.Services["mgmt"] != tc.extMgmt || !ne.ThisNode {
				t.Errorf("nodesExt %+v, want hostname %q kv %d mgmt %d thisNode", ne, tc.extHost, tc.extKV, tc.extMgmt)
			}
		})
	}
}

func BenchmarkClientConfig(b *testing.B) {
	m, err := Build(1, []Server{
		{Name: "node0", KV: "10.0.0.1:11210", HTTP: "10.0.0.1:8091"},
		{Name: "node1", KV: "10.0.0.2:11210", HTTP: "10.0.0.2:8091"},
		{Name: "node2", KV: "10.0.0.3:11210", HTTP: "10.0.0.3:8091"},
	}, DefaultVBuckets, 1, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		m.ClientConfig(1)
	}
}
