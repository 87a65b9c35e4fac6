package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"vbcache/protocol"
)

func TestByteSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"64MiB", 64 << 20, false}, {"1GiB", 1 << 30, false}, {"1gib", 1 << 30, false},
		{"512", 512, false}, {"512B", 512, false}, {"4KiB", 4096, false}, {"64MB", 64 << 20, false},
		{"2G", 2 << 30, false}, {" 8 MiB ", 8 << 20, false},
		{"", 0, true}, {"MiB", 0, true}, {"-1MiB", 0, true}, {"1.5GiB", 0, true}, {"12abc", 0, true},
		{"99999999999999TiB", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var b byteSize
			err := b.Set(tt.in)
			if (err != nil) != tt.wantErr || (err == nil && int64(b) != tt.want) {
				t.Fatalf("Set(%q) = %d, %v; want %d, err %v", tt.in, b, err, tt.want, tt.wantErr)
			}
		})
	}
	if s := byteSize(64 << 20).String(); s != "64MiB" {
		t.Errorf("String = %q", s)
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"defaults", nil, ""},
		{"sizes", []string{"-memory-limit", "1GiB", "-max-item-size", "2MiB"}, ""},
		{"tiny memory", []string{"-memory-limit", "64"}, "below the 1MiB minimum"},
		{"item over memory", []string{"-memory-limit", "2MiB", "-max-item-size", "4MiB"}, "larger than -memory-limit"},
		{"zero conns", []string{"-max-conns", "0"}, "at least 1"},
		{"bad size", []string{"-memory-limit", "lots"}, "not a size"},
		{"bad level", []string{"-log-level", "loud"}, "log-level"},
		{"stray argument", []string{"11211"}, "unexpected argument"},
		{"cluster", []string{"-gossip", "127.0.0.1:7946", "-join", "127.0.0.1:7947, 127.0.0.1:7948", "-name", "a", "-vbuckets", "64"}, ""},
		{"vbuckets not a power of two", []string{"-gossip", "127.0.0.1:7946", "-vbuckets", "1000"}, "-vbuckets"},
		{"too many replicas", []string{"-replicas", "4"}, "outside 0..3"},
		{"replica partners", []string{"-gossip", "127.0.0.1:7946", "-replicas", "2", "-replica-partners", "2"}, ""},
		{"fewer replica partners than replicas", []string{"-gossip", "127.0.0.1:7946", "-replicas", "2", "-replica-partners", "1"},
			"-replica-partners (with -replicas 2): vbucket: bad replica count: 1 replica partners for 2 replicas; want 0 (every other member) or at least the replicas"},
		{"negative replica partners", []string{"-gossip", "127.0.0.1:7946", "-replica-partners", "-1"}, "-1 replica partners"},
		{"replica partners without gossip", []string{"-replica-partners", "1"}, "-replica-partners needs -gossip"},
		{"copy hold", []string{"-gossip", "127.0.0.1:7946", "-copy-hold", "1ms"}, ""},
		{"no copy hold", []string{"-gossip", "127.0.0.1:7946", "-copy-hold", "0"}, ""},
		{"negative copy hold", []string{"-copy-hold", "-1us"}, "-copy-hold -1µs is outside 0..10ms"},
		{"copy hold too long", []string{"-copy-hold", "11ms"}, "-copy-hold 11ms is outside 0..10ms"},
		{"join without gossip", []string{"-join", "127.0.0.1:7946"}, "-join needs -gossip"},
		{"bad gossip address", []string{"-gossip", "7946"}, "missing port"},
		{"idle timeout", []string{"-idle-timeout", "5m"}, ""},
		{"negative idle timeout", []string{"-idle-timeout", "-1s"}, "-idle-timeout -1s is negative"},
		{"json logs", []string{"-log-format", "json"}, ""},
		{"procs", []string{"-procs", "3"}, ""},
		{"negative procs", []string{"-procs", "-1"}, "-procs -1 is negative"},
		{"bad log format", []string{"-log-format", "xml"}, "want text or json"},
		{"secure cluster", []string{"-gossip", "127.0.0.1:7946", "-auth-file", "users", "-peer-user", "node",
			"-gossip-key", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}, ""},
		{"peer user without auth file", []string{"-peer-user", "node"}, "-peer-user needs -auth-file"},
		{"cluster auth without peer user", []string{"-gossip", "127.0.0.1:7946", "-auth-file", "users"}, "needs -peer-user"},
		{"single node auth without peer user", []string{"-auth-file", "users"}, ""},
		{"gossip key not base64", []string{"-gossip", "127.0.0.1:7946", "-gossip-key", "not*base64"}, "not standard base64"},
		{"gossip key of 10 bytes", []string{"-gossip", "127.0.0.1:7946", "-gossip-key", "MDEyMzQ1Njc4OQ=="}, "decodes to 10 bytes"},
		{"gossip key without gossip", []string{"-gossip-key", "MDEyMzQ1Njc4OWFiY2RlZg=="}, "-gossip-key needs -gossip"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			o, err := parseFlags(tt.args, noEnv, &stderr)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tt.name == "defaults" && (o.listen != ":11211" || o.memoryLimit != 64<<20 || o.maxItemSize != 1<<20 || o.maxConns != 4096) {
					t.Fatalf("defaults %+v", o)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error()+stderr.String(), tt.wantErr) {
				t.Fatalf("err %v, stderr %q; want %q", err, stderr.String(), tt.wantErr)
			}
		})
	}
}

// noEnv is an empty environment.
func noEnv(string) (string, bool) { return "", false }

// envOf returns a lookup function over env.
func envOf(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

// TestFlagsFromEnv: every flag but -version is read from its VBCACHE_
// variable, the command line wins, an empty variable counts as unset, and
// an error about a value from the environment names the variable.
func TestFlagsFromEnv(t *testing.T) {
	const key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" // "0123456789abcdef0123456789abcdef"
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		check   func(*options) bool
		wantErr string
	}{
		{"size", map[string]string{"VBCACHE_MEMORY_LIMIT": "128MiB"}, nil,
			func(o *options) bool { return o.memoryLimit == 128<<20 }, ""},
		{"every kind", map[string]string{
			"VBCACHE_LISTEN": "127.0.0.1:1", "VBCACHE_MAX_CONNS": "7", "VBCACHE_IDLE_TIMEOUT": "90s",
			"VBCACHE_LOG_LEVEL": "debug", "VBCACHE_LOG_FORMAT": "json", "VBCACHE_GOSSIP": "127.0.0.1:2",
			"VBCACHE_GOSSIP_KEY": key, "VBCACHE_JOIN": "127.0.0.1:3,127.0.0.1:4", "VBCACHE_REPLICATION": "async",
		}, nil, func(o *options) bool {
			return o.listen == "127.0.0.1:1" && o.maxConns == 7 && o.idleTimeout == 90*time.Second &&
				o.logLevel == slog.LevelDebug && o.logFormat == "json" && o.gossip == "127.0.0.1:2" &&
				string(o.gossipKey) == "0123456789abcdef0123456789abcdef" && len(o.seeds()) == 2 && o.replication == "async"
		}, ""},
		{"command line wins", map[string]string{"VBCACHE_MAX_CONNS": "7", "VBCACHE_LISTEN": "127.0.0.1:1"}, []string{"-max-conns", "9"},
			func(o *options) bool { return o.maxConns == 9 && o.listen == "127.0.0.1:1" }, ""},
		{"command line wins over a bad value", map[string]string{"VBCACHE_MAX_CONNS": "many"}, []string{"-max-conns", "9"},
			func(o *options) bool { return o.maxConns == 9 }, ""},
		{"empty is unset", map[string]string{"VBCACHE_MAX_CONNS": "", "VBCACHE_LISTEN": ""}, nil,
			func(o *options) bool { return o.maxConns == 4096 && o.listen == ":11211" }, ""},
		{"version is not read", map[string]string{"VBCACHE_VERSION": "1.2.3"}, nil,
			func(o *options) bool { return !o.showVersion }, ""},
		{"bad integer", map[string]string{"VBCACHE_MAX_CONNS": "many"}, nil, nil,
			`environment variable VBCACHE_MAX_CONNS: "many" is not a valid -max-conns`},
		{"bad size", map[string]string{"VBCACHE_MEMORY_LIMIT": "lots"}, nil, nil,
			`environment variable VBCACHE_MEMORY_LIMIT: "lots" is not a valid -memory-limit`},
		{"bad duration", map[string]string{"VBCACHE_IDLE_TIMEOUT": "10"}, nil, nil,
			"environment variable VBCACHE_IDLE_TIMEOUT"},
		{"out of range", map[string]string{"VBCACHE_MEMORY_LIMIT": "64"}, nil, nil,
			"-memory-limit (from VBCACHE_MEMORY_LIMIT) 64 is below the 1MiB minimum"},
		{"needs another flag", map[string]string{"VBCACHE_JOIN": "127.0.0.1:3"}, nil, nil,
			"-join (from VBCACHE_JOIN) needs -gossip"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			o, err := parseFlags(tt.args, envOf(tt.env), &stderr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v; want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(o) {
				t.Fatalf("options %+v", *o)
			}
		})
	}
	t.Run("a bad key is not repeated", func(t *testing.T) {
		secret := "c2VjcmV0LXNlY3JldA=" // malformed base64
		_, err := parseFlags([]string{"-gossip", "127.0.0.1:1"}, envOf(map[string]string{"VBCACHE_GOSSIP_KEY": secret}), io.Discard)
		if err == nil || !strings.Contains(err.Error(), "VBCACHE_GOSSIP_KEY") || strings.Contains(err.Error(), secret) {
			t.Fatalf("err %v; want one naming VBCACHE_GOSSIP_KEY without its value", err)
		}
	})
}

// TestEveryFlagHasAnEnvVar: -h shows each flag's variable, derived from
// its name.
func TestEveryFlagHasAnEnvVar(t *testing.T) {
	var stderr bytes.Buffer
	fs := newFlagSet(new(options), &stderr)
	fs.Usage()
	fs.VisitAll(func(f *flag.Flag) {
		env := envName(f.Name)
		if f.Name == "version" {
			if env != "" || strings.Contains(stderr.String(), "VBCACHE_VERSION") {
				t.Errorf("-version is read from the environment")
			}
			return
		}
		if want := "VBCACHE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_")); env != want {
			t.Errorf("-%s: variable %s, want %s", f.Name, env, want)
		}
		if !strings.Contains(stderr.String(), "[$"+env+"]") {
			t.Errorf("-h does not mention %s", env)
		}
	})
}

func TestHelpShowsEveryFlagWithDefaults(t *testing.T) {
	var stderr bytes.Buffer
	_, err := parseFlags([]string{"-h"}, noEnv, &stderr)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatal(err)
	}
	for _, want := range []string{"-listen", "(default \":11211\")", "-memory-limit", "(default 64MiB)", "-max-item-size",
		"(default 1MiB)", "-max-conns", "(default 4096)", "-auth-file", "-log-level", "(default INFO)", "-version",
		"-gossip", "-join", "-name", "-advertise", "-http", "-vbuckets", "(default 1024)", "-replicas", "(default 1)",
		"-idle-timeout", "-peer-user", "-gossip-key", "-log-format", "(default \"text\")"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("-h lacks %q:\n%s", want, stderr.String())
		}
	}
}

// buildNode builds this command into a temporary directory.
func buildNode(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "node")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// TestBinarySignals runs the real binary: it serves, and on SIGTERM exits 0;
// a bad auth file is refused with a clear message and exit 2.
func TestBinarySignals(t *testing.T) {
	bin := buildNode(t)

	t.Run("SIGTERM exits 0", func(t *testing.T) {
		cmd := exec.Command(bin, "-listen", "127.0.0.1:0")
		stderr, _ := cmd.StderrPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		addr := waitListening(t, stderr)
		nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		nc.Write(protocol.AppendHeader(nil, protocol.MagicRequest, protocol.OpNoop, 0, 0, 0, 0, 0, 1, 0))
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := nc.Read(make([]byte, protocol.HeaderLen)); err != nil {
			t.Fatal(err)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("exit: %v", err)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Fatal("node did not exit on SIGTERM")
		}
	})

	t.Run("bad auth file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "users")
		os.WriteFile(f, []byte("nocolon\n"), 0o600)
		out, err := exec.Command(bin, "-listen", "127.0.0.1:0", "-auth-file", f).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "line 1: want user:password") {
			t.Fatalf("err %v, output %q", err, out)
		}
	})

	t.Run("peer user not in the auth file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "users")
		os.WriteFile(f, []byte("alice:wonderland\n"), 0o600)
		out, err := exec.Command(bin, "-listen", "127.0.0.1:0", "-gossip", "127.0.0.1:0", "-auth-file", f, "-peer-user", "bob").CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), `-peer-user "bob" is not a user of -auth-file`) {
			t.Fatalf("err %v, output %q", err, out)
		}
	})

	t.Run("version", func(t *testing.T) {
		out, err := exec.Command(bin, "-version").Output()
		if err != nil || !strings.Contains(string(out), version) {
			t.Fatalf("%v %q", err, out)
		}
	})
}

// TestProcsFor: -procs wins, then $GOMAXPROCS (which the runtime applied
// already); else the node leaves one CPU to the kernel and the clients, and
// keeps at least one.
func TestProcsFor(t *testing.T) {
	tests := []struct {
		name       string
		flag, cpus int
		env        map[string]string
		want       int
	}{
		{"default", 0, 8, nil, 7},
		{"default on 2 CPUs", 0, 2, nil, 1},
		{"default on 1 CPU", 0, 1, nil, 1},
		{"GOMAXPROCS set", 0, 4, map[string]string{"GOMAXPROCS": "4"}, 4},
		{"GOMAXPROCS empty", 0, 4, map[string]string{"GOMAXPROCS": ""}, 3},
		{"flag", 6, 8, map[string]string{"GOMAXPROCS": "2"}, 6},
	}
	for _, tt := range tests {
		o := &options{procs: tt.flag}
		if got := o.procsFor(tt.cpus, envOf(tt.env)); got != tt.want {
			t.Errorf("%s: procsFor(%d) = %d, want %d", tt.name, tt.cpus, got, tt.want)
		}
	}
}

// TestBinaryProcs: the real binary runs with the GOMAXPROCS -procs, its
// variable or $GOMAXPROCS asks for, and says so when it starts.
func TestBinaryProcs(t *testing.T) {
	bin := buildNode(t)
	for _, tt := range []struct {
		name string
		args []string
		env  []string
		want float64
	}{
		{"flag", []string{"-procs", "3"}, []string{"GOMAXPROCS=2"}, 3},
		{"variable", nil, []string{"VBCACHE_PROCS=2"}, 2},
		{"GOMAXPROCS", nil, []string{"GOMAXPROCS=3"}, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{"-listen", "127.0.0.1:0", "-log-format", "json"}, tt.args...)...)
			cmd.Env = cleanEnv(tt.env...)
			rec := startedJSON(t, cmd)
			if rec["procs"] != tt.want {
				t.Fatalf("listening with procs %v, want %v", rec["procs"], tt.want)
			}
		})
	}
}

// startedJSON starts cmd, a node logging JSON, and returns its "listening"
// line; the node is killed when the test ends.
func startedJSON(t *testing.T, cmd *exec.Cmd) map[string]any {
	t.Helper()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan map[string]any)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec map[string]any
			if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
				rec = map[string]any{"not JSON": sc.Text()}
			}
			lines <- rec
		}
	}()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case rec, ok := <-lines:
			if !ok {
				t.Fatal("the node exited without logging that it listens")
			}
			if bad, ok := rec["not JSON"]; ok {
				t.Fatalf("log line is not JSON: %s", bad)
			}
			if rec["msg"] == "listening" {
				go func() {
					for range lines {
					}
				}()
				return rec
			}
		case <-timeout:
			t.Fatal("node did not log its address")
		}
	}
}

// TestBinaryEnv runs the real binary configured from the environment,
// logging JSON.
func TestBinaryEnv(t *testing.T) {
	bin := buildNode(t)

	t.Run("settings from the environment, JSON logs", func(t *testing.T) {
		// VBCACHE_MAX_CONNS is refused, but the command line wins.
		cmd := exec.Command(bin, "-max-conns", "10")
		cmd.Env = cleanEnv("VBCACHE_LISTEN=127.0.0.1:0", "VBCACHE_LOG_FORMAT=json", "VBCACHE_IDLE_TIMEOUT=1m",
			"VBCACHE_MAX_CONNS=many")
		rec := startedJSON(t, cmd)
		if rec["idle_timeout"] != "1m0s" || rec["max_conns"] != 10.0 || rec["level"] != "INFO" {
			t.Fatalf("listening with %v; want idle_timeout 1m0s from the environment, max_conns 10 from the command line", rec)
		}
		addr, _ := rec["addr"].(string)
		if !strings.HasPrefix(addr, "127.0.0.1:") {
			t.Fatalf("listening on %q, want VBCACHE_LISTEN's 127.0.0.1", addr)
		}
	})

	for _, tc := range []struct{ name, env, want string }{
		{"bad integer", "VBCACHE_MAX_CONNS=many", `environment variable VBCACHE_MAX_CONNS: "many" is not a valid -max-conns`},
		{"bad gossip key", "VBCACHE_GOSSIP_KEY=c2hvcnQ=", "environment variable VBCACHE_GOSSIP_KEY: is not a valid -gossip-key: decodes to 5 bytes"},
		{"value out of range", "VBCACHE_REPLICAS=5", "-replicas (from VBCACHE_REPLICAS) 5 is outside 0..3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, "-gossip", "127.0.0.1:0", "-listen", "127.0.0.1:0")
			cmd.Env = cleanEnv(tc.env)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
				t.Fatalf("err %v, output %q; want exit 2 and %q", err, out, tc.want)
			}
		})
	}
}

// TestBinaryListeningLine checks what the node says at start about where
// it listens: the address it is bound to, and in cluster mode the address
// other nodes and cluster maps use.
func TestBinaryListeningLine(t *testing.T) {
	bin := buildNode(t)
	t.Run("single node on every interface", func(t *testing.T) {
		rec := startedJSON(t, exec.Command(bin, "-listen", ":0", "-log-format", "json"))
		addr, _ := rec["addr"].(string)
		host, port, err := net.SplitHostPort(addr)
		if err != nil || net.ParseIP(host) == nil || !net.ParseIP(host).IsUnspecified() {
			t.Fatalf("listening on %q, want the unspecified address and a port", addr)
		}
		if rec["advertise"] != "" {
			t.Fatalf("advertises %q in single-node mode", rec["advertise"])
		}
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", port))
		if err != nil {
			t.Fatalf("not reachable on loopback at the logged port: %v", err)
		}
		c.Close()
	})
	t.Run("cluster node", func(t *testing.T) {
		rec := startedJSON(t, exec.Command(bin, "-listen", "127.0.0.1:0", "-gossip", "127.0.0.1:0",
			"-advertise", "127.0.0.9", "-log-format", "json"))
		addr, _ := rec["addr"].(string)
		_, port, _ := net.SplitHostPort(addr)
		if !strings.HasPrefix(addr, "127.0.0.1:") || rec["advertise"] != "127.0.0.9:"+port {
			t.Fatalf("addr %q, advertise %q; want 127.0.0.1:PORT and 127.0.0.9:PORT", addr, rec["advertise"])
		}
	})
}

// cleanEnv returns this process's environment without VBCACHE_ variables,
// plus vars.
func cleanEnv(vars ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) {
			env = append(env, kv)
		}
	}
	return append(env, vars...)
}

var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

// waitListening reads the node's log until it says where it listens.
func waitListening(t *testing.T, stderr interface{ Read([]byte) (int, error) }) string {
	t.Helper()
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
		}
	}()
	select {
	case addr := <-found:
		return addr
	case <-time.After(10 * time.Second):
		t.Fatal("node did not log its address")
	}
	return ""
}
