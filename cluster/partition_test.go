package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"vbcache/vbucket"
)

// network is a loopback network that can be cut in two groups.
type network struct {
	cut   atomic.Bool
	mu    sync.Mutex
	group map[string]int // gossip port -> group
}

func (n *network) blocked(from, to string) bool {
	if !n.cut.Load() {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	_, port, _ := net.SplitHostPort(to)
	return n.group[from] != n.group[port]
}

// cuttable is memberlist's own transport, dropping what one group sends to
// the other while the network is cut.
type cuttable struct {
	*memberlist.NetTransport
	net  *network
	port string
}

var errCut = errors.New("network cut")

func (t *cuttable) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.net.blocked(t.port, addr) {
		return time.Now(), nil // lost on the way
	}
	return t.NetTransport.WriteTo(b, addr)
}

func (t *cuttable) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.net.blocked(t.port, a.Addr) {
		return time.Now(), nil
	}
	return t.NetTransport.WriteToAddress(b, a)
}

func (t *cuttable) DialTimeout(addr string, d time.Duration) (net.Conn, error) {
	if t.net.blocked(t.port, addr) {
		return nil, errCut
	}
	return t.NetTransport.DialTimeout(addr, d)
}

func (t *cuttable) DialAddressTimeout(a memberlist.Address, d time.Duration) (net.Conn, error) {
	if t.net.blocked(t.port, a.Addr) {
		return nil, errCut
	}
	return t.NetTransport.DialAddressTimeout(a, d)
}

// startMember starts a Cluster on nw in group g, and a stand-in for its
// server that reports every map ready (there is no data to stream).
func startMember(t *testing.T, nw *network, g int, name string, seeds ...string) *Cluster {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{"127.0.0.1"}, BindPort: 0, Logger: newMemberlistLogger(log),
	})
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(nt.GetAutoBindPort())
	nw.mu.Lock()
	nw.group[port] = g
	nw.mu.Unlock()
	c, err := New(Config{
		Name: name, Gossip: "127.0.0.1:" + port, Seeds: seeds, KV: "127.0.0.1:1" + port[1:],
		Logger: log, Transport: &cuttable{NetTransport: nt, net: nw, port: port}, JoinRetry: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		var rev int64
		for ctx.Err() == nil {
			if m := c.WaitMap(ctx, rev); m != nil && m.Rev > rev {
				rev = m.Rev
				c.ReportReady(rev)
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		c.Kill()
	})
	return c
}

// waitAgree waits until every cluster in cs holds the same settled map
// whose servers are exactly cs.
func waitAgree(t *testing.T, what string, cs ...*Cluster) *vbucket.Map {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		why := ""
		m := cs[0].Map()
		for _, c := range cs {
			cm := c.Map()
			switch {
			case cm == nil || m == nil:
				why = c.Name() + " has no map"
			case cm.Rev != m.Rev:
				why = fmt.Sprintf("%s at rev %d, %s at %d", c.Name(), cm.Rev, cs[0].Name(), m.Rev)
			case len(cm.Servers) != len(cs) || cm.IndexOf(c.Name()) < 0 || len(cm.Forward) > 0:
				why = fmt.Sprintf("%s holds rev %d over %d servers (forward %v)", c.Name(), cm.Rev, len(cm.Servers), len(cm.Forward) > 0)
			}
			if why != "" {
				break
			}
		}
		if why == "" {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no agreement within 30s: %s", what, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPartitionHeals cuts a 4-node cluster in two: each side fails the
// other over and goes on with a map of its own; when the network heals the
// nodes rejoin (seeds are retried) and agree on one map again, with a rev
// above both sides'.
func TestPartitionHeals(t *testing.T) {
	nw := &network{group: map[string]int{}}
	a0 := startMember(t, nw, 0, "a0")
	seed := a0.GossipAddr()
	a1 := startMember(t, nw, 0, "a1", seed)
	b0 := startMember(t, nw, 1, "b0", seed)
	b1 := startMember(t, nw, 1, "b1", seed)
	whole := waitAgree(t, "before the cut", a0, a1, b0, b1)

	nw.cut.Store(true)
	sideA := waitAgree(t, "side a", a0, a1)
	sideB := waitAgree(t, "side b", b0, b1)
	t.Logf("cut: rev %d before; side a at rev %d, side b at rev %d", whole.Rev, sideA.Rev, sideB.Rev)

	nw.cut.Store(false)
	healed := waitAgree(t, "after healing", a0, a1, b0, b1)
	if healed.Rev <= max(sideA.Rev, sideB.Rev) {
		t.Fatalf("healed map rev %d is not above both sides' (%d, %d)", healed.Rev, sideA.Rev, sideB.Rev)
	}
	t.Logf("healed at rev %d", healed.Rev)
}
