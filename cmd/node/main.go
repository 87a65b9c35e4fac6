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
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
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

// maxCopyHold bounds -copy-hold: a client's write waits up to the hold,
// and a longer one costs latency that no batching pays back.
const maxCopyHold = 10 * time.Millisecond

type options struct {
	listen       string
	memoryLimit  byteSize
	maxItemSize  byteSize
	maxConns     int
	idleTimeout  time.Duration
	authFile     string
	peerUser     string
	logLevel     slog.Level
	logFormat    string
	showVersion  bool
	drainTimeout time.Duration
	procs        int

	gossip      string
	gossipKey   gossipKey
	join        string
	name        string
	advertise   string
	http        string
	vbuckets    int
	replicas    int
	partners    int
	replication string
	copyHold    time.Duration

	// fromEnv maps the name of each flag set from the environment to
	// the variable's name.
	fromEnv map[string]string
}

func main() {
	if err := run(context.Background(), os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(2)
	}
}

// envPrefix starts the name of the environment variable for each flag:
// VBCACHE_ and the flag's name in upper case with dashes as underscores.
const envPrefix = "VBCACHE_"

// envName returns the environment variable that sets flag name, or "" for
// -version, which is an action, not a setting (and VBCACHE_VERSION a name
// build systems use for something else).
func envName(name string) string {
	if name == "version" {
		return ""
	}
	return envPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// envUsage is what -h adds to the usage of a flag with environment
// variable env.
func envUsage(env string) string { return " [$" + env + "]" }

// newFlagSet returns the node's flags, bound to o's fields and their
// defaults; each flag's usage ends with its environment variable.
func newFlagSet(o *options, stderr io.Writer) *flag.FlagSet {
	*o = options{memoryLimit: 64 << 20, maxItemSize: 1 << 20}
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: node [flags]\n\nA memcached binary protocol cache node. With no cluster flags it serves\n"+
			"every key itself, as a drop-in memcached. Every flag but -version may also be\n"+
			"set with the environment variable shown in brackets; a flag on the command\nline wins.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.listen, "listen", ":11211", "`address` to serve the memcached binary protocol on")
	fs.Var(&o.memoryLimit, "memory-limit", "most item memory held before evicting, like memcached's -m (`size`: 64MiB, 1GiB, or bytes)")
	fs.Var(&o.maxItemSize, "max-item-size", "largest key plus value accepted (`size`); a request declaring a body over this plus 512 bytes is answered 0x03 and skipped, over 16 times that it is answered and the connection closed")
	fs.IntVar(&o.maxConns, "max-conns", 4096, "most client connections at once; more are accepted and closed")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", 0, "close a client connection that sends nothing for this `duration`, like memcached's idle_timeout; 0 never does (connections between nodes are exempt)")
	fs.StringVar(&o.authFile, "auth-file", "", "`file` of SASL PLAIN users, one user:password a line; when set, every command but NOOP, VERSION, HELLO, GET_ERROR_MAP and SASL answers 0x20 until the connection authenticates, and /debug/pprof/ asks for HTTP basic auth with one of these users")
	fs.StringVar(&o.peerUser, "peer-user", "", "the `user` of -auth-file that nodes authenticate to each other as, and the only one they accept from another node; required with -auth-file in cluster mode, the same on every node")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelInfo, "log `level`: debug, info, warn or error; nothing is logged per request above debug")
	fs.StringVar(&o.logFormat, "log-format", "text", "log `format`: text (logfmt) or json, one object a line")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 30*time.Second, "how long SIGINT/SIGTERM may take: handing vbuckets over (cluster mode), then finishing in-flight requests")
	fs.IntVar(&o.procs, "procs", 0, "CPUs that run the node's code at once (GOMAXPROCS), one event loop each; 0: one less than the CPUs available, at least 1 (or $GOMAXPROCS if set), leaving a CPU to the kernel's network stack and the clients beside the node")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	fs.StringVar(&o.gossip, "gossip", "", "`host:port` for memberlist gossip (TCP and UDP); setting it turns cluster mode on")
	fs.Var(&o.gossipKey, "gossip-key", "encrypt and authenticate gossip with this `key`: base64 of 16, 24 or 32 random bytes (AES-128/192/256), the same on every node; a node with another key, or none, cannot join. Make one with: head -c 32 /dev/urandom | base64")
	fs.StringVar(&o.join, "join", "", "comma-separated gossip `addresses` of nodes to join; retried every 2s while any is not a member, so start order does not matter and a partitioned node rejoins")
	fs.StringVar(&o.name, "name", "", "unique node `name` in the cluster (default host:gossip-port)")
	fs.StringVar(&o.advertise, "advertise", "", "`host` other nodes and clients reach this node at (default: the -gossip or -listen host, else a non-loopback address)")
	fs.StringVar(&o.http, "http", "", "HTTP `host:port` for the dashboard at /, /metrics (Prometheus), /cluster, /healthz, the /pools endpoints go-couchbase reads and Go's profiler under /debug/pprof/ (default: none; bind it to a private address)")
	fs.IntVar(&o.vbuckets, "vbuckets", 1024, "number of vbuckets, a power of two, fixed for the life of a cluster; a node with another count is refused")
	fs.IntVar(&o.replicas, "replicas", 1, "replica copies of each vbucket, 0 to 3 (cluster mode)")
	fs.IntVar(&o.partners, "replica-partners", 0, "most nodes that hold the replicas of one node's vbuckets, at least -replicas; 0: every other node. Fewer make a sync-replicated write cheaper, but put a failed node's load on fewer survivors until the rebalance. The map's author (the coordinator) applies its own, as with -replicas")
	fs.StringVar(&o.replication, "replication", "sync", "`mode`: sync acknowledges a write once its replicas have it; async acknowledges first, unless a replica is 4 MiB behind")
	fs.DurationVar(&o.copyHold, "copy-hold", 200*time.Microsecond, "with -replication sync, the longest a write of copies to a replica waits for the clients this node has just answered a replicated write to send again (only those that came back within half of it the last time; after a hold runs out, none for a while), so that one write, and one wake-up of the replica, carries their copies too; 0 to 10ms, 0 sends at once")
	fs.VisitAll(func(f *flag.Flag) {
		if env := envName(f.Name); env != "" {
			f.Usage += envUsage(env)
		}
	})
	return fs
}

// parseFlags parses the command line args, then sets every flag the
// command line did not from its environment variable, read with
// lookupEnv; an empty variable counts as unset. It then checks the
// values; errors about a value from the environment name the variable.
func parseFlags(args []string, lookupEnv func(string) (string, bool), stderr io.Writer) (*options, error) {
	o := new(options)
	fs := newFlagSet(o, stderr)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags start with -)", fs.Arg(0))
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	o.fromEnv = map[string]string{}
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		env := envName(f.Name)
		if env == "" || onCommandLine[f.Name] || envErr != nil {
			return
		}
		v, ok := lookupEnv(env)
		if !ok || v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			shown := fmt.Sprintf(" %q", v)
			if f.Name == "gossip-key" {
				shown = "" // a secret, even when malformed
			}
			envErr = fmt.Errorf("environment variable %s:%s is not a valid -%s: %v", env, shown, f.Name, err)
		}
		o.fromEnv[f.Name] = env
	})
	if envErr != nil {
		return nil, envErr
	}
	if err := o.check(); err != nil {
		return nil, err
	}
	return o, nil
}

// flagName names flag name in errors: -name, and the environment variable
// if the value came from there.
func (o *options) flagName(name string) string {
	if env := o.fromEnv[name]; env != "" {
		return "-" + name + " (from " + env + ")"
	}
	return "-" + name
}

// check checks the parsed values.
func (o *options) check() error {
	f := o.flagName
	if o.memoryLimit < 1<<20 {
		return fmt.Errorf("%s %v is below the 1MiB minimum", f("memory-limit"), o.memoryLimit)
	}
	if o.maxItemSize < 1<<10 || o.maxItemSize > 1<<30 {
		return fmt.Errorf("%s %v is outside 1KiB..1GiB", f("max-item-size"), o.maxItemSize)
	}
	if o.maxItemSize > o.memoryLimit {
		return fmt.Errorf("%s %v is larger than %s %v", f("max-item-size"), o.maxItemSize, f("memory-limit"), o.memoryLimit)
	}
	if o.maxConns < 1 {
		return fmt.Errorf("%s must be at least 1, not %d", f("max-conns"), o.maxConns)
	}
	if o.idleTimeout < 0 {
		return fmt.Errorf("%s %v is negative", f("idle-timeout"), o.idleTimeout)
	}
	if o.procs < 0 {
		return fmt.Errorf("%s %d is negative", f("procs"), o.procs)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return fmt.Errorf("%s %q: want text or json", f("log-format"), o.logFormat)
	}
	if err := vbucket.CheckCount(o.vbuckets); err != nil {
		return fmt.Errorf("%s: %w", f("vbuckets"), err)
	}
	if o.replication != "sync" && o.replication != "async" {
		return fmt.Errorf("%s %q: want sync or async", f("replication"), o.replication)
	}
	if o.copyHold < 0 || o.copyHold > maxCopyHold {
		return fmt.Errorf("%s %v is outside 0..%v", f("copy-hold"), o.copyHold, maxCopyHold)
	}
	if o.replicas < 0 || o.replicas > 3 {
		return fmt.Errorf("%s %d is outside 0..3", f("replicas"), o.replicas)
	}
	if err := vbucket.CheckPartners(o.replicas, o.partners); err != nil {
		return fmt.Errorf("%s (with %s %d): %w", f("replica-partners"), f("replicas"), o.replicas, err)
	}
	if o.gossip == "" {
		for _, c := range []struct {
			name string
			set  bool
		}{{"join", o.join != ""}, {"name", o.name != ""}, {"gossip-key", len(o.gossipKey) > 0},
			{"replica-partners", o.partners != 0}} {
			if c.set {
				return fmt.Errorf("%s needs -gossip (cluster mode)", f(c.name))
			}
		}
	}
	switch {
	case o.peerUser != "" && o.authFile == "":
		return fmt.Errorf("%s needs -auth-file, the file the user is in", f("peer-user"))
	case o.peerUser == "" && o.authFile != "" && o.gossip != "":
		return errors.New("-auth-file in cluster mode needs -peer-user: the user of the file nodes authenticate to each other as")
	}
	for _, a := range append([]string{o.listen, o.gossip, o.http}, o.seeds()...) {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("address %q: %v", a, err)
		}
	}
	return nil
}

// run starts a node and blocks until ctx ends or a signal arrives.
func run(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) error {
	o, err := parseFlags(args, lookupEnv, stderr)
	if err != nil {
		return err
	}
	if o.showVersion {
		fmt.Fprintln(stdout, "vbcache node", version)
		return nil
	}
	log := newLogger(stderr, o.logFormat, o.logLevel)

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
		if _, ok := users[o.peerUser]; o.peerUser != "" && !ok {
			return fmt.Errorf("%s %q is not a user of -auth-file %s", o.flagName("peer-user"), o.peerUser, o.authFile)
		}
	}

	runtime.GOMAXPROCS(o.procsFor(runtime.GOMAXPROCS(0), lookupEnv))

	// No GOMEMLIMIT by default: items live outside the Go heap (see
	// store), so the heap is the index and buffers, and GOGC's default
	// pacing keeps it within the overhead above.

	// Catch signals before the node says it is listening, so a signal
	// sent on that cue always takes the graceful path.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	n, err := node.New(node.Config{
		Listen:          o.listen,
		MemoryLimit:     int64(o.memoryLimit),
		MaxItemSize:     int(o.maxItemSize),
		MaxConns:        o.maxConns,
		IdleTimeout:     o.idleTimeout,
		Users:           users,
		PeerUser:        o.peerUser,
		Version:         "1.6.0-vbcache-" + version,
		Logger:          log,
		Gossip:          o.gossip,
		GossipKey:       o.gossipKey,
		Seeds:           o.seeds(),
		Name:            o.name,
		Advertise:       o.advertise,
		HTTP:            o.http,
		VBuckets:        o.vbuckets,
		Replicas:        o.replicas,
		ReplicaPartners: o.partners,

		AsyncReplication: o.replication == "async",
		CopyHold:         o.copyHold,
	})
	if err != nil {
		return err
	}
	advertised := "" // what other nodes and cluster maps use; single-node mode has none
	if o.gossip != "" {
		advertised = n.KVAddr()
	}
	log.Info("listening", "addr", n.KVListenAddr(), "advertise", advertised, "http", n.HTTPAddr(), "cluster", o.gossip != "",
		"memory_limit", o.memoryLimit.String(), "max_item_size", o.maxItemSize.String(),
		"max_conns", o.maxConns, "idle_timeout", o.idleTimeout.String(), "auth", len(users) > 0, "peer_user", o.peerUser,
		"gossip_encrypted", len(o.gossipKey) > 0, "vbuckets", o.vbuckets, "procs", runtime.GOMAXPROCS(0), "version", version)

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

// procsFor returns the GOMAXPROCS the node runs with, given the runtime's
// (the CPUs available to the process, or $GOMAXPROCS). By default it leaves
// one CPU to the kernel's network stack, which does much of the work of
// every request (system calls take half or more of the node's CPU time in
// the bench's loads), and to the clients and other processes on the host.
// On the 2-CPU bench machine, shared with the load generator, two Ps served
// 16 clients at most 8% faster than one, with several times the p999 latency:
// the runtime's idle Ms spin for work and a busy P polls the network late
// (BENCHMARKS.md, "GOMAXPROCS").
func (o *options) procsFor(runtimeProcs int, lookupEnv func(string) (string, bool)) int {
	if o.procs > 0 {
		return o.procs
	}
	if v, ok := lookupEnv("GOMAXPROCS"); ok && v != "" {
		return runtimeProcs // the runtime has applied it
	}
	return max(1, runtimeProcs-1)
}

// newLogger returns the node's logger: logfmt text or JSON lines on w.
func newLogger(w io.Writer, format string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
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

// gossipKey is -gossip-key: a key given in standard base64. Its errors do
// not repeat the value, which may be a secret with a typo.
type gossipKey []byte

func (k *gossipKey) Set(s string) error {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return errors.New("not standard base64 (make a key with: head -c 32 /dev/urandom | base64)")
	}
	if n := len(b); n != 16 && n != 24 && n != 32 {
		return fmt.Errorf("decodes to %d bytes; a key is 16, 24 or 32 bytes (AES-128, -192 or -256)", n)
	}
	*k = b
	return nil
}

// String does not show the key, for -h and for logs.
func (k gossipKey) String() string {
	if len(k) == 0 {
		return ""
	}
	return "(secret)"
}
