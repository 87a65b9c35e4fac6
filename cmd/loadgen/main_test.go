package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"vbcache/protocol"
)

// startMemcached starts memcached on a free loopback port and returns its
// address; it is stopped when the test ends. The test is skipped if the
// memcached binary is not installed.
func startMemcached(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("memcached")
	if err != nil {
		t.Skip("memcached not installed (apt-get install -y memcached)")
	}
	port := freePort(t)
	args := []string{"-l", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "0", "-m", "64"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root") // memcached refuses to run as root without -u
	}
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start memcached: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		nc, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			nc.Close()
			return addr
		}
		select {
		case err := <-exited:
			t.Fatalf("memcached exited: %v: %s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("memcached did not accept connections on %s within 10s: %v", addr, err)
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestRunAgainstMemcached(t *testing.T) {
	addr := startMemcached(t)
	tests := []struct {
		name    string
		mode    string
		depth   int
		maxOps  int64
		think   time.Duration
		wantOps uint64 // exact, if not 0
	}{
		{name: "depth=1", mode: ModeRun, depth: 1},
		{name: "depth=8", mode: ModeRun, depth: 8},
		{name: "max-ops=1001/depth=4", mode: ModeRun, depth: 4, maxOps: 1001, wantOps: 1001},
		{name: "think=20ms", mode: ModeRun, depth: 1, think: 20 * time.Millisecond},
		{name: "load/items=5000", mode: ModeLoad, depth: 1, wantOps: 5000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Addr = addr
			cfg.Mode = tt.mode
			cfg.Conns = 4
			cfg.Depth = tt.depth
			cfg.Keys = 2000
			cfg.Items = 5000
			cfg.Warmup = 100 * time.Millisecond
			cfg.Duration = 400 * time.Millisecond
			cfg.MaxOps = tt.maxOps
			cfg.Think = tt.think
			cfg.VBuckets = 1024 // memcached ignores the vbucket field
			res, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if res.Errors != 0 {
				t.Fatalf("errors: %+v", res)
			}
			if tt.wantOps != 0 && res.Ops != tt.wantOps {
				t.Errorf("ops = %d, want %d", res.Ops, tt.wantOps)
			}
			if res.Ops == 0 || res.OpsPerSec <= 0 || res.Seconds <= 0 {
				t.Fatalf("nothing measured: %+v", res)
			}
			if tt.mode == ModeLoad {
				return
			}
			if tt.think > 0 {
				// Each connection does a request, then thinks: at most
				// one request per think, and one more in flight at the start.
				if most := uint64(cfg.Conns) * (uint64(cfg.Duration/tt.think) + 1); res.Ops > most {
					t.Errorf("%d ops in %v with %v of thinking after each, want at most %d", res.Ops, cfg.Duration, tt.think, most)
				}
			}
			if res.PrefillItems != uint64(cfg.Keys) {
				t.Errorf("prefilled %d items, want %d", res.PrefillItems, cfg.Keys)
			}
			if res.Gets+res.Sets != res.Ops || res.GetHits != res.Gets || res.GetMisses != 0 {
				t.Errorf("after prefill every GET should hit: ops %d gets %d hits %d misses %d sets %d",
					res.Ops, res.Gets, res.GetHits, res.GetMisses, res.Sets)
			}
			if res.hist.Count() != res.Ops {
				t.Errorf("histogram holds %d samples for %d ops", res.hist.Count(), res.Ops)
			}
			if !(0 < res.P50us && res.P50us <= res.P99us && res.P99us <= res.P999us && res.P999us <= res.MaxUs) {
				t.Errorf("percentiles out of order: p50 %v p99 %v p999 %v max %v", res.P50us, res.P99us, res.P999us, res.MaxUs)
			}
		})
	}
}

func TestMainJSON(t *testing.T) {
	addr := startMemcached(t)
	var stdout, stderr bytes.Buffer
	code := mainErr([]string{"-addr", addr, "-conns", "2", "-keys", "100", "-warmup", "0", "-duration", "200ms", "-json"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var got map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("output is not one JSON object: %v: %s", err, stdout.String())
	}
	for _, k := range []string{"ops_per_sec", "p50_us", "p99_us", "p999_us", "errors", "get_hits", "get_misses"} {
		if _, ok := got[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, stdout.String())
		}
	}
}

func TestConnectFailuresAreErrors(t *testing.T) {
	port := freePort(t) // closed again: connections are refused
	args := []string{"-addr", fmt.Sprintf("127.0.0.1:%d", port), "-conns", "3", "-duration", "100ms", "-json"}
	var stdout, stderr bytes.Buffer
	if code := mainErr(args, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1; stderr %s", code, stderr.String())
	}
	var res Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatal(err)
	}
	if res.ConnectFailures != 3 || res.ConnErrors != 3 || res.Errors != 3 {
		t.Errorf("connect failures %d, conn errors %d, errors %d; want 3 each", res.ConnectFailures, res.ConnErrors, res.Errors)
	}
	stdout.Reset()
	if code := mainErr(append(args, "-allow-errors"), &stdout, io.Discard); code != 0 {
		t.Errorf("with -allow-errors: exit %d, want 0", code)
	}
}

func TestRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"10.0.0.1:11211", "example.com:11211", "0.0.0.0:11211", "nonsense"} {
		cfg := DefaultConfig()
		cfg.Addr = addr
		if _, err := Run(context.Background(), cfg); err == nil {
			t.Errorf("Run accepted %q", addr)
		}
	}
}

// fakeServer answers every SET/SETQ with OUT_OF_MEMORY, every GET with
// KEY_NOT_FOUND and every NOOP with OK, so the error accounting can be
// tested without memcached.
func fakeServer(t *testing.T) string {
	t.Helper()
	return listenFake(t, func(out []byte, req *protocol.Request) []byte {
		switch req.Opcode {
		case protocol.OpSet, protocol.OpSetQ:
			return protocol.AppendError(out, req.Opcode, protocol.StatusOutOfMemory, req.Opaque)
		case protocol.OpGet:
			return protocol.AppendError(out, req.Opcode, protocol.StatusKeyNotFound, req.Opaque)
		}
		return protocol.AppendHeader(out, protocol.MagicResponse, req.Opcode, 0, 0, 0, 0, 0, req.Opaque, 0)
	})
}

// listenFake starts a fake server on 127.0.0.1 that serves every
// connection with serveFake and handle, until the test ends; it returns
// the server's address.
func listenFake(t *testing.T, handle func(out []byte, req *protocol.Request) []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { serveFake(nc, handle) })
		}
	})
	return ln.Addr().String()
}

func TestStatusErrorsAreCounted(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Addr = fakeServer(t)
	cfg.Conns = 2
	cfg.Keys = 300
	cfg.Warmup = 0
	cfg.Duration = 5 * time.Second
	cfg.MaxOps = 2000
	cfg.GetRatio = 0.5
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.ConnErrors != 0 {
		t.Fatalf("connection errors: %v", res.ErrorSamples)
	}
	if res.Ops != 2000 || res.GetHits != 0 || res.GetMisses != res.Gets || res.Sets != 0 {
		t.Errorf("ops %d gets %d hits %d misses %d sets %d", res.Ops, res.Gets, res.GetHits, res.GetMisses, res.Sets)
	}
	if res.PrefillItems != 0 {
		t.Errorf("prefilled %d items, but every SETQ failed", res.PrefillItems)
	}
	// Every prefill SETQ and every SET failed; misses are not errors.
	setsSent := res.Ops - res.Gets + uint64(cfg.Keys)
	if res.OpErrors != setsSent || res.Errors != setsSent {
		t.Errorf("op errors %d, errors %d; want %d", res.OpErrors, res.Errors, setsSent)
	}
	if got := res.StatusErrors["0x82 Out of memory"]; got != setsSent {
		t.Errorf("status errors %v, want 0x82 x %d", res.StatusErrors, setsSent)
	}
}

func TestAppendKey(t *testing.T) {
	for _, n := range []uint64{0, 7, 12345678, 123456789, 1<<64 - 1} {
		if got, want := string(appendKey(nil, n)), fmt.Sprintf("key:%08d", n); got != want {
			t.Errorf("appendKey(%d) = %q, want %q", n, got, want)
		}
	}
	buf := make([]byte, 0, 32)
	if a := testing.AllocsPerRun(100, func() { buf = appendKey(buf[:0], 42) }); a != 0 {
		t.Errorf("appendKey allocates %v times", a)
	}
}

// serveFake serves a fake server's connection: it answers every request
// with what handle appends, one write per read, until the client leaves or
// sends something that is not a request.
func serveFake(nc net.Conn, handle func(out []byte, req *protocol.Request) []byte) {
	defer nc.Close()
	buf := make([]byte, 0, 1<<20)
	var out []byte
	for {
		if len(buf) == cap(buf) {
			return
		}
		n, err := nc.Read(buf[len(buf):cap(buf)])
		if err != nil {
			return
		}
		buf = buf[:len(buf)+n]
		out = out[:0]
		for {
			req, n, err := protocol.Parse(buf, protocol.MagicRequest, 1<<20)
			if errors.Is(err, protocol.ErrIncomplete) {
				break
			}
			if err != nil {
				return
			}
			out = handle(out, &req)
			buf = buf[:copy(buf, buf[n:])]
		}
		if _, err := nc.Write(out); err != nil {
			return
		}
	}
}
