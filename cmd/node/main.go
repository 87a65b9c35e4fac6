// Command node runs a vbcache node: a memcached binary protocol server.
//
// With no cluster flags it is a single-node, drop-in replacement for
// memcached's binary protocol; -gossip turns cluster mode on. It parses
// flags, builds the logger, starts a node.Node and waits for SIGINT or
// SIGTERM, on which it stops accepting, finishes the requests in flight,
// leaves the cluster and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"vbcache/node"
	"vbcache/server"
	"vbcache/vbucket"
)

// version is this build's version, printed by -version.
const version = "0.1.0"

// The memory the process uses beyond -memory-limit, as documented in the
// README: runtimeOverhead for the Go runtime, goroutine stacks and idle
// connection buffers, plus indexBytesPerItem for each item's index entry
// (a Go map slot; see store.ItemSize) and 16 KiB per open connection.
const (
	runtimeOverhead   = 32 << 20
	indexBytesPerItem = 40
)

type options struct {
	listen       string
	memoryLimit  byteSize
	maxItemSize  byteSize
	maxConns     int
	authFile     string
	logLevel     slog.Level
	showVersion  bool
	drainTimeout time.Duration

	gossip      string
	join        string
	name        string
	advertise   string
	http        string
	vbuckets    int
	replicas    int
	replication string
}

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(2)
	}
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{memoryLimit: 64 << 20, maxItemSize: 1 << 20}
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: node [flags]\n\nA memcached binary protocol cache node. With no cluster flags it serves\nevery key itself, as a drop-in memcached.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.listen, "listen", ":11211", "`address` to serve the memcached binary protocol on")
	fs.Var(&o.memoryLimit, "memory-limit", "most item memory to hold before evicting, like memcached's -m (`size`: 64MiB, 1GiB, or bytes)")
	fs.Var(&o.maxItemSize, "max-item-size", "largest key plus value accepted (`size`)")
	fs.IntVar(&o.maxConns, "max-conns", 4096, "most client connections served at once")
	fs.StringVar(&o.authFile, "auth-file", "", "`file` of SASL PLAIN users, one user:password a line; when set, clients must authenticate")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelInfo, "log `level`: debug, info, warn or error")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 30*time.Second, "how long SIGTERM may take: handing vbuckets over (cluster mode) and finishing in-flight requests")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	fs.StringVar(&o.gossip, "gossip", "", "gossip `host:port` (memberlist, TCP and UDP); setting it turns cluster mode on")
	fs.StringVar(&o.join, "join", "", "comma-separated gossip `addresses` of nodes to join; retried in the background")
	fs.StringVar(&o.name, "name", "", "unique node `name` in the cluster (default host:gossip-port)")
	fs.StringVar(&o.advertise, "advertise", "", "`host` other nodes and clients reach this node at (default: the -gossip or -listen host, else a non-loopback address)")
	fs.StringVar(&o.http, "http", "", "HTTP `host:port` for /cluster, /healthz and the /pools endpoints (default: none)")
	fs.IntVar(&o.vbuckets, "vbuckets", 1024, "number of vbuckets, a power of two; the same on every node for the life of a cluster")
	fs.IntVar(&o.replicas, "replicas", 1, "replica copies of each vbucket (cluster mode)")
	fs.StringVar(&o.replication, "replication", "sync", "`mode`: sync acknowledges a write once its replicas have it; async acknowledges first")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags start with -)", fs.Arg(0))
	}
	if o.memoryLimit < 1<<20 {
		return nil, fmt.Errorf("-memory-limit %v is below the 1MiB minimum", o.memoryLimit)
	}
	if o.maxItemSize < 1<<10 || o.maxItemSize > 1<<30 {
		return nil, fmt.Errorf("-max-item-size %v is outside 1KiB..1GiB", o.maxItemSize)
	}
	if o.maxItemSize > o.memoryLimit {
		return nil, fmt.Errorf("-max-item-size %v is larger than -memory-limit %v", o.maxItemSize, o.memoryLimit)
	}
	if o.maxConns < 1 {
		return nil, fmt.Errorf("-max-conns must be at least 1, not %d", o.maxConns)
	}
	if err := vbucket.CheckCount(o.vbuckets); err != nil {
		return nil, fmt.Errorf("-vbuckets: %w", err)
	}
	if o.replication != "sync" && o.replication != "async" {
		return nil, fmt.Errorf("-replication %q: want sync or async", o.replication)
	}
	if o.replicas < 0 || o.replicas > 3 {
		return nil, fmt.Errorf("-replicas %d is outside 0..3", o.replicas)
	}
	if o.gossip == "" {
		for _, f := range []struct{ name, v string }{{"-join", o.join}, {"-name", o.name}} {
			if f.v != "" {
				return nil, fmt.Errorf("%s needs -gossip (cluster mode)", f.name)
			}
		}
	}
	for _, a := range append([]string{o.listen, o.gossip, o.http}, o.seeds()...) {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("address %q: %v", a, err)
		}
	}
	return o, nil
}

// run starts a node and blocks until ctx ends or a signal arrives.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.showVersion {
		fmt.Fprintln(stdout, "vbcache node", version)
		return nil
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))

	var users map[string]string
	if o.authFile != "" {
		f, err := os.Open(o.authFile)
		if err != nil {
			return fmt.Errorf("-auth-file: %w", err)
		}
		users, err = server.ParseUsers(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("-auth-file %s: %w", o.authFile, err)
		}
	}

	// No GOMEMLIMIT by default: items live outside the Go heap (see
	// store), so the heap is the index and buffers, and GOGC's default
	// pacing keeps it within the overhead above.

	// Catch signals before the node says it is listening, so a signal
	// sent on that cue always takes the graceful path.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	n, err := node.New(node.Config{
		Listen:      o.listen,
		MemoryLimit: int64(o.memoryLimit),
		MaxItemSize: int(o.maxItemSize),
		MaxConns:    o.maxConns,
		Users:       users,
		Version:     "1.6.0-vbcache-" + version,
		Logger:      log,
		Gossip:      o.gossip,
		Seeds:       o.seeds(),
		Name:        o.name,
		Advertise:   o.advertise,
		HTTP:        o.http,
		VBuckets:    o.vbuckets,
		Replicas:    o.replicas,

		AsyncReplication: o.replication == "async",
	})
	if err != nil {
		return err
	}
	log.Info("listening", "addr", n.KVAddr(), "http", n.HTTPAddr(), "cluster", o.gossip != "",
		"memory_limit", o.memoryLimit.String(), "max_item_size", o.maxItemSize.String(),
		"max_conns", o.maxConns, "auth", len(users) > 0, "vbuckets", o.vbuckets, "version", version)

	select {
	case err := <-n.Err():
		n.Close()
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down", "drain_timeout", o.drainTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), o.drainTimeout)
	defer cancel()
	if err := n.Shutdown(sctx); err != nil {
		log.Warn("shutdown cut short by -drain-timeout", "err", err)
	}
	log.Info("stopped")
	return nil
}

// seeds returns the -join addresses.
func (o *options) seeds() []string {
	var out []string
	for _, s := range strings.Split(o.join, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// byteSize is a flag value in bytes written with an optional binary unit:
// 512, 64KiB, 64MiB, 1GiB (KB, MB, GB and K, M, G mean the same).
type byteSize int64

var units = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"TB", 1 << 40},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1},
}

func (b *byteSize) Set(s string) error {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if len(num) > len(u.suffix) && strings.EqualFold(num[len(num)-len(u.suffix):], u.suffix) {
			num, mult = strings.TrimSpace(num[:len(num)-len(u.suffix)]), u.mult
			break
		}
	}
	var n int64
	if _, err := fmt.Sscanf(num, "%d", &n); err != nil || n < 0 || fmt.Sprint(n) != num {
		return fmt.Errorf("%q is not a size like 64MiB or 1GiB", s)
	}
	if n > (1<<62)/mult {
		return fmt.Errorf("%q is too large", s)
	}
	*b = byteSize(n * mult)
	return nil
}

func (b byteSize) String() string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if int64(b) >= u.mult && int64(b)%u.mult == 0 {
			return fmt.Sprintf("%d%s", int64(b)/u.mult, u.suffix)
		}
	}
	return fmt.Sprintf("%d", int64(b))
}
