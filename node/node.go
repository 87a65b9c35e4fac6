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
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
	// authenticate, and so must the other nodes of the cluster.
	Users map[string]string
	// PeerUser names the user in Users that nodes authenticate to each
	// other as, for forwarded requests, replication and rebalance streams:
	// this node presents its credentials, and accepts only them from a
	// node. Required in cluster mode when Users is set; every node needs
	// the same user with the same password.
	PeerUser string
	// IdleTimeout closes client connections idle that long; 0, the
	// default, never does. See server.Config.
	IdleTimeout time.Duration
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
	// GossipKey encrypts and authenticates gossip; see
	// cluster.Config.GossipKey. Every node needs the same one.
	GossipKey []byte
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
	// ReplicaPartners: see cluster.Config.
	ReplicaPartners int
	// AsyncReplication acknowledges writes before replicas have them.
	AsyncReplication bool
	// CopyHold: see server.Config.
	CopyHold time.Duration
}

// Errors returned by New for a Config that cannot work.
var (
	ErrNoPeerUser      = errors.New("node: a cluster node with users needs a peer user (Config.PeerUser) to authenticate to the other nodes as")
	ErrUnknownPeerUser = errors.New("node: the peer user is not among the users")
)

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
	peerAuth, err := peerCredentials(cfg)
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger, serveErr: make(chan error, 3)}
	ok := false
	defer func() {
		if !ok {
			n.Close()
		}
	}()

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

	scfg := server.Config{
		Store: n.store, MaxItemSize: cfg.MaxItemSize, MaxConns: cfg.MaxConns, IdleTimeout: cfg.IdleTimeout, Users: cfg.Users,
		Version: cfg.Version, Logger: cfg.Logger, VBuckets: cfg.VBuckets, PeerAuth: peerAuth,
		AsyncReplication: cfg.AsyncReplication, CopyHold: cfg.CopyHold,
	}
	if cfg.Gossip != "" {
		check, err := peerFingerprint(peerAuth)
		if err != nil {
			return nil, err
		}
		ccfg := cluster.Config{
			Name: cfg.Name, Gossip: cfg.Gossip, Advertise: cfg.Advertise, Seeds: cfg.Seeds, KV: n.kvAddr,
			VBuckets: cfg.VBuckets, Replicas: cfg.Replicas, ReplicaPartners: cfg.ReplicaPartners,
			Logger: cfg.Logger, GossipKey: cfg.GossipKey, PeerCheck: check,
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

// KVListenAddr is the address the memcached listener is bound to, which
// differs from KVAddr when it listens on every interface.
func (n *Node) KVListenAddr() string { return n.kvLn.Addr().String() }

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

// peerCredentials returns the credentials this node presents to the other nodes,
// or nil if it presents none.
func peerCredentials(cfg Config) (*server.PeerAuth, error) {
	switch {
	case len(cfg.Users) == 0:
		return nil, nil
	case cfg.PeerUser == "" && cfg.Gossip != "":
		return nil, ErrNoPeerUser
	case cfg.PeerUser == "":
		return nil, nil // a single node has no peers
	}
	pass, ok := cfg.Users[cfg.PeerUser]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownPeerUser, cfg.PeerUser)
	}
	return &server.PeerAuth{User: cfg.PeerUser, Password: pass}, nil
}

// peerFingerprint is what a node advertises in its gossip metadata so that
// the others refuse it at once if its peer credentials differ from theirs,
// rather than admit it and have every stream to it refused. It is
// PBKDF2-SHA256 of the password, salted with the user, at a cost that makes
// guessing the password from it slow; without -gossip-key, gossip is in the
// clear and anyone on the network can read it.
func peerFingerprint(a *server.PeerAuth) (string, error) {
	if a == nil {
		return "", nil
	}
	key, err := pbkdf2.Key(sha256.New, a.Password, []byte("vbcache peer credentials\x00"+a.User), peerFingerprintIter, 16)
	if err != nil { // FIPS 140-only mode refuses short passwords
		return "", fmt.Errorf("node: peer credentials: %w", err)
	}
	return base64.RawStdEncoding.EncodeToString(key), nil
}

// peerFingerprintIter is PBKDF2's iteration count for peerFingerprint:
// about 20 ms of one core at each start.
const peerFingerprintIter = 100_000

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
