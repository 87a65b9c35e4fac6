// Command loadgen drives a memcached-binary-protocol server on a loopback
// address with a closed-loop GET/SET load and reports throughput, latency
// percentiles and errors.
//
// Each connection is one goroutine that writes a batch of -depth requests in
// one write, reads all -depth responses, and repeats. A request's latency runs
// from its batch's write to the read that completed its response. Latencies go
// to fixed log-linear histograms (constant memory, no allocation per request),
// one per connection, merged at the end.
//
// Every run is bounded: the load loop stops at -duration after -warmup (or at
// -max-ops), no I/O waits past -timeout, and a connection that makes no
// progress for -io-timeout fails. Only loopback addresses are accepted.
//
// With -owner ADDR the key space is the first -keys (load mode: -items) keys
// whose vbucket the server at ADDR holds active, as the cluster config that
// -addr answers to GET_CLUSTER_CONFIG says; the load itself stays a legacy
// (no HELLO, vbucket 0) one unless -vbuckets is set. -mode stats prints the
// server's STAT output instead of running a load.
//
// Exit status: 0 on success, 1 if any error was counted (a connection that
// failed to connect or broke, an unexpected status, a wrong-length value)
// unless -allow-errors, 2 on bad flags.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"syscall"
)

func main() {
	os.Exit(mainErr(os.Args[1:], os.Stdout, os.Stderr))
}

// mainErr runs the command with args and returns its exit status.
func mainErr(args []string, stdout, stderr io.Writer) int {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: loadgen [flags]\n\n"+
			"Mixed GET/SET load against a memcached binary protocol server:\n"+
			"  loadgen -addr 127.0.0.1:11211 -conns 16 -depth 16 -duration 10s\n"+
			"Store N items and exit (for memory tests):\n"+
			"  loadgen -mode load -items 1000000\n"+
			"Use only keys a cluster node owns (here talking to another node, which forwards):\n"+
			"  loadgen -addr 127.0.0.1:11211 -owner 127.0.0.1:11212\n"+
			"Print the server's statistics:\n"+
			"  loadgen -mode stats -addr 127.0.0.1:11211\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.Addr, "addr", cfg.Addr, "server `host:port` (loopback only)")
	fs.StringVar(&cfg.Mode, "mode", cfg.Mode, "run: mixed GET/SET load; load: store -items items with pipelined SETQ and exit; stats: print STAT and exit")
	fs.IntVar(&cfg.Conns, "conns", cfg.Conns, "connections, each driven by its own goroutine")
	fs.IntVar(&cfg.Depth, "depth", cfg.Depth, "requests in flight per connection: each batch of depth requests is one write")
	fs.Float64Var(&cfg.GetRatio, "get-ratio", cfg.GetRatio, "fraction of requests that are GETs; the rest are SETs (0: SETs only)")
	fs.IntVar(&cfg.Keys, "keys", cfg.Keys, "key space: keys key:00000000 .. key:<keys-1>, picked uniformly")
	fs.IntVar(&cfg.ValueSize, "value-size", cfg.ValueSize, "value size in `bytes`")
	fs.IntVar(&cfg.Items, "items", cfg.Items, "items to store in load mode (key:00000000 upwards)")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "measured run time")
	fs.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "unmeasured load before the measured time")
	fs.DurationVar(&cfg.Think, "think", cfg.Think, "pause after each batch's responses, as a client that works between requests; 0 to 1s (0: none)")
	fs.Int64Var(&cfg.MaxOps, "max-ops", cfg.MaxOps, "stop after this many measured requests; 0 = no limit (-duration still bounds the run)")
	fs.BoolVar(&cfg.Prefill, "prefill", cfg.Prefill, "SET every key once (pipelined SETQ + NOOP) before the warmup")
	fs.IntVar(&cfg.VBuckets, "vbuckets", cfg.VBuckets, "if > 0, put each key's CRC vbucket for this many vbuckets in the header; 0 sends vbucket 0")
	fs.StringVar(&cfg.Owner, "owner", cfg.Owner, "cluster node `host:port`: use only keys whose vbucket it holds active, per -addr's GET_CLUSTER_CONFIG")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "random seed; 0 picks one from the clock")
	fs.DurationVar(&cfg.IOTimeout, "io-timeout", cfg.IOTimeout, "fail a connection that makes no progress for this long; also the connect timeout")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "hard limit on the whole run; 0 = warmup+duration+2m (load mode: 10m)")
	asJSON := fs.Bool("json", false, "print one JSON object on stdout instead of text")
	allowErrors := fs.Bool("allow-errors", false, "exit 0 even if errors were counted")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "loadgen: unexpected arguments %q\n", fs.Args())
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cfg.Mode == ModeStats {
		return printStats(ctx, cfg, *asJSON, stdout, stderr)
	}
	res, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 2
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		if err := enc.Encode(res); err != nil {
			fmt.Fprintf(stderr, "loadgen: %v\n", err)
			return 1
		}
	} else {
		printText(stdout, res)
	}
	if res.Errors > 0 && !*allowErrors {
		fmt.Fprintf(stderr, "loadgen: %d errors (%d connections failed, %d of them to connect); -allow-errors to ignore\n",
			res.Errors, res.ConnErrors, res.ConnectFailures)
		return 1
	}
	return 0
}

// printStats prints the STAT output of cfg.Addr, one "name value" a line or
// as one JSON object of strings.
func printStats(ctx context.Context, cfg Config, asJSON bool, stdout, stderr io.Writer) int {
	if err := checkLoopback(cfg.Addr); err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 2
	}
	stats, err := fetchStats(ctx, cfg.Addr, cfg.IOTimeout)
	if err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 1
	}
	if !asJSON {
		for _, s := range stats {
			fmt.Fprintf(stdout, "%s %s\n", s.Name, s.Value)
		}
		return 0
	}
	m := make(map[string]string, len(stats))
	for _, s := range stats {
		m[s.Name] = s.Value
	}
	if err := json.NewEncoder(stdout).Encode(m); err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 1
	}
	return 0
}

// printText writes res for a human.
func printText(w io.Writer, res *Result) {
	pct := func(part, whole uint64) float64 {
		if whole == 0 {
			return 0
		}
		return 100 * float64(part) / float64(whole)
	}
	fmt.Fprintf(w, "target     %s  mode %s  conns %d  value %d B\n", res.Addr, res.Mode, res.Conns, res.ValueSize)
	if res.Mode == ModeLoad {
		fmt.Fprintf(w, "stored     %d items in %.3f s  (%.0f items/s)\n", res.Ops, res.Seconds, res.OpsPerSec)
	} else {
		fmt.Fprintf(w, "load       depth %d  get %.0f%%  keys %d\n", res.Depth, 100*res.GetRatio, res.Keys)
	}
	if ks := res.KeySelection; ks != nil {
		fmt.Fprintf(w, "keys       owned by %s: %d vbuckets in map rev %d; %d candidates looked at\n",
			ks.Owner, ks.OwnedVBuckets, ks.ConfigRev, ks.Candidates)
	}
	if res.Mode != ModeLoad {
		if res.PrefillSeconds > 0 {
			fmt.Fprintf(w, "prefill    %d items in %.3f s\n", res.PrefillItems, res.PrefillSeconds)
		}
		fmt.Fprintf(w, "measured   %d ops in %.3f s  = %.0f ops/s\n", res.Ops, res.Seconds, res.OpsPerSec)
		fmt.Fprintf(w, "latency µs p50 %.1f  p99 %.1f  p999 %.1f  max %.1f  mean %.1f\n",
			res.P50us, res.P99us, res.P999us, res.MaxUs, res.MeanUs)
		fmt.Fprintf(w, "gets       %d  hits %d (%.1f%%)  misses %d   sets %d\n",
			res.Gets, res.GetHits, pct(res.GetHits, res.Gets), res.GetMisses, res.Sets)
	}
	fmt.Fprintf(w, "errors     %d  (status %d, bad values %d, connections failed %d, of which never connected %d)\n",
		res.Errors, res.OpErrors, res.BadValues, res.ConnErrors, res.ConnectFailures)
	codes := make([]string, 0, len(res.StatusErrors))
	for code := range res.StatusErrors {
		codes = append(codes, code)
	}
	slices.Sort(codes)
	for _, code := range codes {
		fmt.Fprintf(w, "  status %s: %d\n", code, res.StatusErrors[code])
	}
	for _, s := range res.ErrorSamples {
		fmt.Fprintf(w, "  e.g. %s\n", s)
	}
}
