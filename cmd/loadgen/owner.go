package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"time"

	"vbcache/protocol"
	"vbcache/vbucket"
)

// Key selection by owner: with -owner, the key space is not key:0 ..
// key:<n-1> but the first n keys key:N (N = 0, 1, 2, ...) whose vbucket is
// held active by the server at the -owner address, as the Couchbase bucket
// config the server at -addr answers to GET_CLUSTER_CONFIG says. A cluster
// load can so talk to one node about keys another node owns (every request
// forwarded) or about keys it owns itself (no forwarding).

// maxKeyCandidates bounds the scan for owned keys: keys are key:%08d of a
// uint32.
const maxKeyCandidates = math.MaxUint32

// clusterConfig is the part of the Couchbase bucket config (the JSON of
// GET_CLUSTER_CONFIG and /pools/default/buckets/default) that key selection
// reads.
type clusterConfig struct {
	Rev              int64 `json:"rev"`
	VBucketServerMap struct {
		HashAlgorithm     string   `json:"hashAlgorithm"`
		ServerList        []string `json:"serverList"`
		VBucketMap        [][]int  `json:"vBucketMap"`
		VBucketMapForward [][]int  `json:"vBucketMapForward"`
	} `json:"vBucketServerMap"`
}

// parseConfig decodes a bucket config. Server addresses "$HOST:port" get
// host in place of $HOST, as clients do with the host they connected to.
func parseConfig(data []byte, host string) (*clusterConfig, error) {
	var c clusterConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("cluster config: %w", err)
	}
	m := &c.VBucketServerMap
	if a := m.HashAlgorithm; a != "" && !strings.EqualFold(a, "CRC") {
		return nil, fmt.Errorf("cluster config: hash algorithm %q, want CRC", a)
	}
	if err := vbucket.CheckCount(len(m.VBucketMap)); err != nil {
		return nil, fmt.Errorf("cluster config: vBucketMap: %w", err)
	}
	for i, s := range m.ServerList {
		if rest, ok := strings.CutPrefix(s, "$HOST"); ok {
			m.ServerList[i] = net.JoinHostPort(host, strings.TrimPrefix(rest, ":"))
		}
	}
	return &c, nil
}

// ownedBy returns, per vbucket, whether the server at address owner holds
// it active. It fails if owner is not a server of the map, holds no
// vbucket, or the map is being rebalanced (ownership is about to change).
func (c *clusterConfig) ownedBy(owner string) ([]bool, error) {
	m := &c.VBucketServerMap
	idx := -1
	for i, s := range m.ServerList {
		if sameAddr(s, owner) {
			idx = i
			break
		}
	}
	if idx < 0 {
		return nil, fmt.Errorf("owner %s is not in the cluster map (servers %v)", owner, m.ServerList)
	}
	if len(m.VBucketMapForward) > 0 {
		return nil, fmt.Errorf("cluster map rev %d is being rebalanced (it has a forward map); wait until the cluster settles", c.Rev)
	}
	owned := make([]bool, len(m.VBucketMap))
	n := 0
	for vb, row := range m.VBucketMap {
		if len(row) > 0 && row[0] == idx {
			owned[vb] = true
			n++
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("owner %s holds no vbucket active in cluster map rev %d", owner, c.Rev)
	}
	return owned, nil
}

// sameAddr reports whether host:port addresses a and b are the same,
// allowing for "localhost" and different spellings of the same IP.
func sameAddr(a, b string) bool {
	if a == b {
		return true
	}
	ah, ap, err1 := net.SplitHostPort(a)
	bh, bp, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || ap != bp {
		return false
	}
	norm := func(h string) string {
		if h == "localhost" {
			return "127.0.0.1"
		}
		if ip := net.ParseIP(h); ip != nil {
			return ip.String()
		}
		return h
	}
	return norm(ah) == norm(bh)
}

// selectKeys returns the ids of the first n keys (key:%08d of 0, 1, 2, ...)
// whose vbucket is owned, and how many candidates it looked at. It fails if
// fewer than n are found among the first limit candidates.
func selectKeys(owned []bool, n int, limit uint64) (ids []uint32, scanned uint64, err error) {
	if n < 0 {
		return nil, 0, fmt.Errorf("select keys: n %d < 0", n)
	}
	if limit > maxKeyCandidates+1 {
		limit = maxKeyCandidates + 1
	}
	ids = make([]uint32, 0, n)
	key := make([]byte, 0, 32)
	for id := uint64(0); len(ids) < n; id++ {
		if id >= limit {
			return nil, id, fmt.Errorf("select keys: only %d of %d wanted keys among the first %d candidates", len(ids), n, limit)
		}
		key = appendKey(key[:0], id)
		if owned[vbucket.VBucket(key, len(owned))] {
			ids = append(ids, uint32(id))
		}
		scanned = id + 1
	}
	return ids, scanned, nil
}

// ownerKeys asks the server at addr for its cluster config and selects the
// first n keys held active by owner.
func ownerKeys(ctx context.Context, addr, owner string, n int, timeout time.Duration) ([]uint32, *keySelection, error) {
	data, err := fetchConfig(ctx, addr, timeout)
	if err != nil {
		return nil, nil, err
	}
	host, _, _ := net.SplitHostPort(addr)
	c, err := parseConfig(data, host)
	if err != nil {
		return nil, nil, err
	}
	owned, err := c.ownedBy(owner)
	if err != nil {
		return nil, nil, err
	}
	ids, scanned, err := selectKeys(owned, n, maxKeyCandidates+1)
	if err != nil {
		return nil, nil, err
	}
	sel := &keySelection{Owner: owner, ConfigRev: c.Rev, Candidates: scanned}
	for _, o := range owned {
		if o {
			sel.OwnedVBuckets++
		}
	}
	return ids, sel, nil
}

// keySelection describes how the keys of a run were chosen with -owner.
type keySelection struct {
	Owner         string `json:"owner"`
	ConfigRev     int64  `json:"config_rev"`     // rev of the map the keys were chosen from
	OwnedVBuckets int    `json:"owned_vbuckets"` // vbuckets the owner held active
	Candidates    uint64 `json:"candidates"`     // keys looked at to find the wanted number
}

// fetchConfig sends GET_CLUSTER_CONFIG to addr on a connection of its own
// (so the load's connections stay legacy, vbucket-unaware ones) and returns
// the config JSON.
func fetchConfig(ctx context.Context, addr string, timeout time.Duration) ([]byte, error) {
	var req []byte
	req = protocol.AppendHeader(req, protocol.MagicRequest, protocol.OpGetClusterConfig, 0, 0, protocol.DataTypeRaw, 0, 0, 1, 0)
	var config []byte
	err := exchange(ctx, addr, timeout, req, func(resp *protocol.Request) (bool, error) {
		if resp.Opcode != protocol.OpGetClusterConfig {
			return false, fmt.Errorf("GET_CLUSTER_CONFIG: got a %v response", resp.Opcode)
		}
		if st := resp.Status(); st != protocol.StatusOK {
			return false, fmt.Errorf("GET_CLUSTER_CONFIG: status 0x%02x (%s): %.200s", uint16(st), st.Message(), resp.Value)
		}
		if len(resp.Value) == 0 {
			return false, errors.New("GET_CLUSTER_CONFIG: empty config (no cluster map yet?)")
		}
		config = append([]byte(nil), resp.Value...)
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	return config, nil
}

// exchange dials addr, writes req and hands every response frame to handle
// until it returns done or an error. The whole exchange is bounded by
// timeout.
func exchange(ctx context.Context, addr string, timeout time.Duration, req []byte, handle func(*protocol.Request) (done bool, err error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	if _, err := nc.Write(req); err != nil {
		return err
	}
	rd := newFrameReader(nc, 16<<20)
	for {
		resp, err := rd.next()
		if err != nil {
			return err
		}
		done, err := handle(&resp)
		if err != nil || done {
			return err
		}
	}
}
