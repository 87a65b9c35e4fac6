package vbucket

import (
	"encoding/json"
	"net"
	"strconv"
)

// Fixed parts of the bucket config clients read.
const (
	bucketName   = "default"
	bucketUUID   = "0123456789abcdef" // clients only need it non-empty and stable
	defaultMgmt  = 8091               // Couchbase's management port, used when a server has no HTTP listener
	hostVariable = "$HOST"            // clients replace it with the address they connected to
)

// ClientConfig renders the Couchbase bucket config JSON that
// GET_CLUSTER_CONFIG and NOT_MY_VBUCKET carry (PROTOCOL.md, "Cluster config
// JSON") for bucket "default", as served by the server at index self, which
// gets "thisNode": true in nodesExt; self may be -1.
//
// serverList holds the KV addresses in Servers order, nodesExt the same
// servers in the same order with services kv and mgmt (the HTTP port, or
// 8091 when HTTP is empty), nodes their "host:mgmt", KV port and
// couchApiBase (the mgmt port + 1, Couchbase's convention). A server whose
// KV host is empty is named "$HOST" (and has no nodesExt hostname), which
// clients replace with the address they connected to. vBucketMapForward is
// there when Forward is set. The uri, streamingUri and bucketType fields
// let go-couchbase read the same JSON over HTTP.
//
// The output depends only on the map and self. Each call allocates a new
// slice, which the caller owns; callers answering often should keep the
// result per map.
func (m *Map) ClientConfig(self int) []byte {
	c := clientConfig{
		Rev:          m.Rev,
		Name:         bucketName,
		UUID:         bucketUUID,
		URI:          "/pools/default/buckets/" + bucketName,
		StreamingURI: "/pools/default/bucketsStreaming/" + bucketName,
		BucketType:   "membase",
		NodeLocator:  "vbucket",
		Capabilities: []string{"cccp", "nodesExt"},
		Nodes:        make([]configNode, len(m.Servers)),
		NodesExt:     make([]configNodeExt, len(m.Servers)),
		VBucketServerMap: vbucketServerMap{
			HashAlgorithm: "CRC",
			NumReplicas:   m.Replicas,
			ServerList:    make([]string, len(m.Servers)),
			VBucketMap:    m.VBuckets,
		},
	}
	if c.VBucketServerMap.VBucketMap == nil {
		c.VBucketServerMap.VBucketMap = [][]int{}
	}
	if len(m.Forward) > 0 {
		c.VBucketServerMap.VBucketMapForward = m.Forward
	}
	for i, s := range m.Servers {
		host, kv := splitHostPort(s.KV)
		mgmt := defaultMgmt
		if s.HTTP != "" {
			_, mgmt = splitHostPort(s.HTTP)
		}
		named := host
		if named == "" {
			named = hostVariable
		}
		capi := mgmt
		if capi < 65535 {
			capi++
		}
		c.VBucketServerMap.ServerList[i] = net.JoinHostPort(named, strconv.Itoa(kv))
		c.Nodes[i] = configNode{
			Hostname:     net.JoinHostPort(named, strconv.Itoa(mgmt)),
			Ports:        configPorts{Direct: kv},
			CouchAPIBase: "http://" + net.JoinHostPort(named, strconv.Itoa(capi)) + "/" + bucketName,
		}
		c.NodesExt[i] = configNodeExt{
			Hostname: host,
			ThisNode: i == self,
			Services: configServices{KV: kv, Mgmt: mgmt},
		}
	}
	// Marshal cannot fail: the value holds only strings, ints, bools and
	// slices of them.
	b, _ := json.Marshal(c)
	return b
}

// splitHostPort splits "host:port"; a missing or bad port is 0.
func splitHostPort(addr string) (string, int) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, 0
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return host, 0
	}
	return host, int(p)
}

// clientConfig is the bucket config, with the fields that gocbcore v10,
// the C++ core of the npm couchbase SDK and go-couchbase read.
type clientConfig struct {
	Rev              int64            `json:"rev"`
	Name             string           `json:"name"`
	UUID             string           `json:"uuid"`
	URI              string           `json:"uri"`
	StreamingURI     string           `json:"streamingUri"`
	BucketType       string           `json:"bucketType"`
	NodeLocator      string           `json:"nodeLocator"`
	Capabilities     []string         `json:"bucketCapabilities"`
	Nodes            []configNode     `json:"nodes"`
	NodesExt         []configNodeExt  `json:"nodesExt"`
	VBucketServerMap vbucketServerMap `json:"vBucketServerMap"`
}

type configNode struct {
	Hostname     string      `json:"hostname"`
	Ports        configPorts `json:"ports"`
	CouchAPIBase string      `json:"couchApiBase"`
}

type configPorts struct {
	Direct int `json:"direct"`
}

type configNodeExt struct {
	Hostname string         `json:"hostname,omitempty"`
	ThisNode bool           `json:"thisNode,omitempty"`
	Services configServices `json:"services"`
}

type configServices struct {
	KV   int `json:"kv"`
	Mgmt int `json:"mgmt"`
}

type vbucketServerMap struct {
	HashAlgorithm     string   `json:"hashAlgorithm"`
	NumReplicas       int      `json:"numReplicas"`
	ServerList        []string `json:"serverList"`
	VBucketMap        [][]int  `json:"vBucketMap"`
	VBucketMapForward [][]int  `json:"vBucketMapForward,omitempty"`
}
