package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
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
		{"join without gossip", []string{"-join", "127.0.0.1:7946"}, "-join needs -gossip"},
		{"bad gossip address", []string{"-gossip", "7946"}, "missing port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			o, err := parseFlags(tt.args, &stderr)
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

func TestHelpShowsEveryFlagWithDefaults(t *testing.T) {
	var stderr bytes.Buffer
	_, err := parseFlags([]string{"-h"}, &stderr)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatal(err)
	}
	for _, want := range []string{"-listen", "(default \":11211\")", "-memory-limit", "(default 64MiB)", "-max-item-size",
		"(default 1MiB)", "-max-conns", "(default 4096)", "-auth-file", "-log-level", "(default INFO)", "-version",
		"-gossip", "-join", "-name", "-advertise", "-http", "-vbuckets", "(default 1024)", "-replicas", "(default 1)"} {
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

	t.Run("version", func(t *testing.T) {
		out, err := exec.Command(bin, "-version").Output()
		if err != nil || !strings.Contains(string(out), version) {
			t.Fatalf("%v %q", err, out)
		}
	})
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
