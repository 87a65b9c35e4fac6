// Package node wires one cache node together: the store, the memcached
// binary protocol server, and in cluster mode the membership layer and the
// HTTP endpoints. cmd/node parses flags into a Config; tests run several
// Nodes in one process.
//
// A Node owns every goroutine and listener it starts; Shutdown (graceful)
// or Close (abrupt) stops them all and waits.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"vbcache/cluster"
	"vbcache/server"
	"vbcache/store"
)

// leaveLinger is how long a node that has handed its vbuckets over keeps
// serving before it closes client connections.
const leaveLinger = time.Second

// Config configures a Node. Zero values take the defaults given.
type Config struct {
	// Listen is the memcached binary protocol address. Default ":11211";
	// port 0 picks a free port (see KVAddr).
	Listen string
	// MemoryLimit, MaxItemSize, MaxConns: see store.Config and
	// server.Config (defaults 64 MiB, 1 MiB, 4096).
	MemoryLimit int64
	MaxItemSize int
	MaxConns    int
	// Users are SASL PLAIN credentials; when set, clients must
	// authenticate, and this node authenticates to its peers as the first
	// user by name.
	Users map[string]string
	// Version is reported by VERSION and STAT.
	Version string
	// Logger; default slog.Default().
	Logger *slog.Logger

	// Gossip, when set, turns cluster mode on: memberlist binds this
	// host:port (port 0 picks one).
	Gossip string
	// Seeds are gossip addresses of nodes to join, retried in the
	// background.
	Seeds []string
	// Name is this node's cluster name; default host:gossip-port.
	Name string
	// Advertise is the host other nodes and clients reach this node at.
	// Default: the host of Gossip or Listen if it is a specific address,
	// else one of the machine's non-loopback addresses.
	Advertise string
	// HTTP is the HTTP listen address (/cluster, /healthz, /pools...);
	// empty: no HTTP listener.
	HTTP string
	// VBuckets (default 1024) and Replicas (default 1 in cluster mode).
	VBuckets int
	Replicas int
	// AsyncReplication acknowledges writes before replicas have them.
	AsyncReplication bool
}

// Node is a running cache node.
type Node struct {
	cfg      Config
	log      *slog.Logger
	store    *store.Store
	srv      *server.Server
	cl       *cluster.Cluster // nil in single-node mode
	kvLn     net.Listener
	httpLn   net.Listener
	httpSrv  *http.Server
	peerHTTP *http.Client // asks other members for the dashboard; nil without httpLn
	kvAddr   string       // advertised memcached address

	wg       sync.WaitGroup
	serveErr chan error // first error from a serving goroutine
	stopOnce sync.Once
}

// New starts a node: it binds the listeners, joins the cluster if
// cfg.Gossip is set, and serves until Shutdown or Close.
func New(cfg Config) (*Node, error) {
	if cfg.Listen == "" {
		cfg.Listen = ":11211"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	n := &Node{cfg: cfg, log: cfg.Logger, serveErr: make(chan error, 3)}
	ok := false
	defer func() {
		if !ok {
			n.Close()
		}
	}()

	var err error
	n.store, err = store.New(store.Config{MemoryLimit: cfg.MemoryLimit, MaxItemSize: cfg.MaxItemSize})
	if err != nil {
		return nil, err
	}
	if n.kvLn, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("memcached listener: %w", err)
	}
	if cfg.HTTP != "" {
		if n.httpLn, err = net.Listen("tcp", cfg.HTTP); err != nil {
			return nil, fmt.Errorf("HTTP listener: %w", err)
		}
	}
	host := advertiseHost(cfg)
	n.kvAddr = withHost(n.kvLn.Addr(), host)

	var peerAuth *server.PeerAuth
	if len(cfg.Users) > 0 {
		names := make([]string, 0, len(cfg.Users))
		for u := range cfg.Users {
			names = append(names, u)
		}
		slices.Sort(names)
		peerAuth = &server.PeerAuth{User: names[0], Password: cfg.Users[names[0]]}
	}

	scfg := server.Config{
		Store: n.store, MaxItemSize: cfg.MaxItemSize, MaxConns: cfg.MaxConns, Users: cfg.Users,
		Version: cfg.Version, Logger: cfg.Logger, VBuckets: cfg.VBuckets, PeerAuth: peerAuth,
		AsyncReplication: cfg.AsyncReplication,
	}
	if cfg.Gossip != "" {
		ccfg := cluster.Config{
			Name: cfg.Name, Gossip: cfg.Gossip, Advertise: cfg.Advertise, Seeds: cfg.Seeds,
			KV: n.kvAddr, VBuckets: cfg.VBuckets, Replicas: cfg.Replicas, Logger: cfg.Logger,
		}
		if cfg.Advertise == "" {
			ccfg.Advertise = host
		}
		if n.httpLn != nil {
			ccfg.HTTP = withHost(n.httpLn.Addr(), host)
		}
		if n.cl, err = cluster.New(ccfg); err != nil {
			return nil, err
		}
		scfg.Cluster = n.cl
	}
	if n.srv, err = server.New(scfg); err != nil {
		return nil, err
	}

	n.wg.Go(func() {
		if err := n.srv.Serve(n.kvLn); err != nil && !errors.Is(err, server.ErrServerClosed) {
			n.serveErr <- fmt.Errorf("memcached listener: %w", err)
		}
	})
	if n.httpLn != nil {
		n.peerHTTP = newPeerHTTP()
		n.httpSrv = &http.Server{Handler: n.handler(), ReadHeaderTimeout: 10 * time.Second}
		n.wg.Go(func() {
			if err := n.httpSrv.Serve(n.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				n.serveErr <- fmt.Errorf("HTTP listener: %w", err)
			}
		})
	}
	ok = true
	return n, nil
}

// KVAddr is the advertised address of the memcached listener.
func (n *Node) KVAddr() string { return n.kvAddr }

// HTTPAddr is the address of the HTTP listener, or "".
func (n *Node) HTTPAddr() string {
	if n.httpLn == nil {
		return ""
	}
	return n.httpLn.Addr().String()
}

// Cluster returns the membership layer, or nil in single-node mode.
func (n *Node) Cluster() *cluster.Cluster { return n.cl }

// Store returns the node's item store.
func (n *Node) Store() *store.Store { return n.store }

// Err returns a channel that receives an error if a listener fails.
func (n *Node) Err() <-chan error { return n.serveErr }

// Shutdown stops the node gracefully: in cluster mode it first hands its
// vbuckets, data included, to the other nodes; then it stops accepting,
// finishes the requests in flight and leaves the cluster. ctx bounds the
// whole; what has not finished when it ends is cut short.
func (n *Node) Shutdown(ctx context.Context) error {
	var err error
	n.stopOnce.Do(func() {
		if n.cl != nil {
			start := time.Now()
			n.log.Info("handing vbuckets over before leaving")
			switch lerr := n.cl.Leave(ctx); {
			case errors.Is(lerr, cluster.ErrNoOneToHandOver):
				n.log.Warn("every other node is leaving too; leaving without handing vbuckets over")
			case lerr != nil:
				err = lerr
				n.log.Warn("vbuckets not all handed over before the drain timeout", "err", lerr)
			default:
				n.log.Info("vbuckets handed over", "took", time.Since(start).Round(time.Millisecond))
				// Keep answering for a moment: clients that still send here
				// get NOT_MY_VBUCKET with the new map (or are forwarded)
				// and move on before their connections close.
				linger := time.NewTimer(leaveLinger)
				select {
				case <-linger.C:
				case <-ctx.Done():
					linger.Stop()
				}
			}
		}
		if n.srv != nil {
			if serr := n.srv.Shutdown(ctx); serr != nil {
				err = serr
			}
		}
		if n.cl != nil {
			n.cl.Shutdown()
		}
		n.stop()
	})
	return err
}

// Close stops the node at once: connections are dropped and the cluster is
// left without a goodbye, as if the process had died (the others notice by
// failure detection). Safe to call more than once.
func (n *Node) Close() {
	n.stopOnce.Do(func() {
		if n.srv != nil {
			n.srv.Close()
		}
		if n.cl != nil {
			n.cl.Kill()
		}
		n.stop()
	})
}

func (n *Node) stop() {
	if n.httpSrv != nil {
		n.httpSrv.Close()
	} else if n.httpLn != nil {
		n.httpLn.Close()
	}
	if n.srv == nil && n.kvLn != nil {
		n.kvLn.Close()
	}
	n.wg.Wait()
	if n.peerHTTP != nil {
		n.peerHTTP.CloseIdleConnections()
	}
	if n.store != nil {
		n.store.Close()
	}
}

// advertiseHost picks the host other nodes and clients reach this node at.
func advertiseHost(cfg Config) string {
	if cfg.Advertise != "" {
		return cfg.Advertise
	}
	for _, a := range []string{cfg.Gossip, cfg.Listen} {
		if h, _, err := net.SplitHostPort(a); err == nil && h != "" {
			if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
				return h
			}
		}
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	return "127.0.0.1"
}

// withHost returns addr's port joined with host.
func withHost(addr net.Addr, host string) string {
	_, port, _ := net.SplitHostPort(addr.String())
	return net.JoinHostPort(host, port)
}
