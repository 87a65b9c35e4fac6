package vbucket_test

import (
	"encoding/json"
	"fmt"

	"vbcache/vbucket"
)

func ExampleVBucket() {
	vb := vbucket.VBucket([]byte("hello"), vbucket.DefaultVBuckets)
	fmt.Println(vbucket.Hash([]byte("hello")), vb)
	// Output: 13840 528
}

func ExampleBuild() {
	m, err := vbucket.Build(1, []vbucket.Server{
		{Name: "node1", KV: "10.0.0.2:11210"},
		{Name: "node0", KV: "10.0.0.1:11210", HTTP: "10.0.0.1:8091"},
	}, vbucket.DefaultVBuckets, 1, 0)
	if err != nil {
		panic(err)
	}
	fmt.Println(m.Validate(), m.Servers[0].Name, m.NumVBuckets())

	// Route a key: its vbucket's row names the active server, then the
	// replica.
	vb := vbucket.VBucket([]byte("hello"), m.NumVBuckets())
	row := m.VBuckets[vb]
	fmt.Println(len(row), row[0] == m.Active(vb), row[0] != row[1])

	active, replica := m.Counts()
	fmt.Println(active[0]+active[1], replica[0]+replica[1])
	// Output:
	// <nil> node0 1024
	// 2 true true
	// 1024 1024
}

func ExampleMap_ClientConfig() {
	m := &vbucket.Map{
		Rev:      3,
		Replicas: 1,
		Servers: []vbucket.Server{
			{Name: "node0", KV: "127.0.0.1:11901", HTTP: "127.0.0.1:18091"},
			{Name: "node1", KV: "127.0.0.1:11902", HTTP: "127.0.0.1:18092"},
		},
		VBuckets: [][]int{{0, 1}, {1, 0}},
	}
	var c struct {
		Rev              int64 `json:"rev"`
		VBucketServerMap struct {
			ServerList []string `json:"serverList"`
			VBucketMap [][]int  `json:"vBucketMap"`
		} `json:"vBucketServerMap"`
	}
	if err := json.Unmarshal(m.ClientConfig(0), &c); err != nil {
		panic(err)
	}
	fmt.Println(c.Rev, c.VBucketServerMap.ServerList, c.VBucketServerMap.VBucketMap)
	// Output: 3 [127.0.0.1:11901 127.0.0.1:11902] [[0 1] [1 0]]
}
