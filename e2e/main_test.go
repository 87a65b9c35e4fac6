//go:build linux

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// buildTimeout bounds the one `go build` of the node.
	buildTimeout = 5 * time.Minute
	// startTimeout bounds the wait for a started server to accept TCP.
	startTimeout = 10 * time.Second
	// stopTimeout bounds the wait for a server to exit after SIGTERM.
	stopTimeout = 10 * time.Second
	// clientTimeout bounds one run of a client program.
	clientTimeout = 60 * time.Second
)

// harness is what TestMain sets up once, before any test runs; tests only
// read it.
type harness struct {
	root      string // module root: the directory holding go.mod
	memcached bool   // E2E_SERVER=memcached: run against a real memcached
	bin       string // the server executable: the built node, or memcached
	direct    bool   // E2E_DIRECT=1: no tap between clients and server
}

var h harness

func TestMain(m *testing.M) {
	os.Exit(setUp(m))
}

func setUp(m *testing.M) int {
	root, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	h.root = root
	h.direct = os.Getenv("E2E_DIRECT") == "1"

	switch kind := os.Getenv("E2E_SERVER"); kind {
	case "", "node":
		dir, err := os.MkdirTemp("", "vbcache-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		h.bin = filepath.Join(dir, "node")
		if err := buildNode(root, h.bin); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: building ./cmd/node:", err)
			return 1
		}
	case "memcached":
		h.memcached = true
		if h.bin, err = exec.LookPath("memcached"); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: E2E_SERVER=memcached needs memcached (apt-get install memcached):", err)
			return 1
		}
	default:
		fmt.Fprintf(os.Stderr, "e2e: E2E_SERVER=%q: want node (the default) or memcached\n", kind)
		return 2
	}
	return m.Run()
}

// buildNode builds ./cmd/node of the module at root into bin, with the race
// detector when the tests have it.
func buildNode(root, bin string) error {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.CommandContext(ctx, "go", append(args, "./cmd/node")...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// server is one running server process.
type server struct {
	addr string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{} // closed once the process has exited and err is set
	err  error         // cmd.Wait's result
}

// errExited says the server process ended before it accepted a connection.
var errExited = errors.New("server exited before accepting connections")

// startServer starts a fresh server on a free loopback port, adding
// extraArgs to its command line, waits until it accepts TCP connections and
// returns its address. It blocks for at most startTimeout per attempt. The
// server is stopped with SIGTERM in t.Cleanup, where a server that crashed,
// did not exit with status 0, or reported a data race fails the test; when
// the test failed, the server's output is logged.
func startServer(t *testing.T, extraArgs ...string) string {
	t.Helper()
	// A port found free can be taken before the server binds it: retry.
	const attempts = 3
	for attempt := 1; ; attempt++ {
		addr, err := freeLoopbackAddr()
		if err != nil {
			t.Fatal(err)
		}
		s, err := launch(addr, extraArgs)
		if err == nil {
			t.Cleanup(func() { s.stop(t) })
			return addr
		}
		if !errors.Is(err, errExited) || attempt == attempts {
			t.Fatalf("starting %s: %v\nserver output:\n%s", h.bin, err, s.out)
		}
		t.Logf("attempt %d: %v; output:\n%s", attempt, err, s.out)
	}
}

func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// serverArgs is the command line that makes the server listen on addr.
func serverArgs(addr string) ([]string, error) {
	if !h.memcached {
		return []string{"-listen", addr}, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	args := []string{"-U", "0", "-l", host, "-p", port}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root") // memcached refuses root without it
	}
	return args, nil
}

// launch starts the server process on addr and waits until it accepts TCP.
// On error the process has exited or been killed; s.out holds its output.
func launch(addr string, extraArgs []string) (*server, error) {
	s := &server{addr: addr, out: &lockedBuffer{}, done: make(chan struct{})}
	args, err := serverArgs(addr)
	if err != nil {
		return s, err
	}
	s.cmd = exec.Command(h.bin, append(args, extraArgs...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	// Do not outlive a test binary that is killed.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return s, err
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()

	if err := waitAccepting(addr, s.done, startTimeout); err != nil {
		s.cmd.Process.Kill()
		<-s.done
		return s, err
	}
	return s, nil
}

// waitAccepting polls addr until a TCP connection succeeds, exited is
// closed, or timeout passes.
func waitAccepting(addr string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := net.DialTimeout("tcp", addr, 250*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting after %v: %w", addr, timeout, err)
		}
		select {
		case <-exited:
			return errExited
		case <-tick.C:
		}
	}
}

// stop ends the server with SIGTERM (then SIGKILL after stopTimeout) and
// reports on t anything wrong with how it ran.
func (s *server) stop(t *testing.T) {
	select {
	case <-s.done:
		t.Errorf("server exited during the test: %v", s.err)
	default:
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
			if s.err != nil {
				t.Errorf("server exited with %v after SIGTERM, want status 0", s.err)
			}
		case <-time.After(stopTimeout):
			s.cmd.Process.Kill()
			<-s.done
			t.Errorf("server still running %v after SIGTERM; killed it", stopTimeout)
		}
	}
	out := s.out.String()
	if strings.Contains(out, "WARNING: DATA RACE") {
		t.Errorf("the race detector found a data race in the server (see its output)")
	}
	if t.Failed() {
		t.Logf("server %s %s output:\n%s", h.bin, s.addr, out)
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent use: the process
// writes its output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// connectAddr returns the address a client should use to reach the server
// at addr: a tap in front of it unless E2E_DIRECT=1.
func connectAddr(t *testing.T, addr string) string {
	t.Helper()
	if h.direct {
		return addr
	}
	return startTap(t, addr).Addr()
}

// requireTool fails the test if program is not installed; pkg names the
// Debian package that provides it.
func requireTool(t *testing.T, program, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(program); err != nil {
		t.Fatalf("%s not found: apt-get install %s (scripts/test.sh installs every client)", program, pkg)
	}
}

// python is the Debian interpreter: the client modules are Debian packages,
// which another python3 on PATH (pyenv, venv) does not see.
const python = "/usr/bin/python3"

// requirePythonModule fails the test if /usr/bin/python3 cannot import
// module; pkg names the Debian package that provides it.
func requirePythonModule(t *testing.T, module, pkg string) {
	t.Helper()
	requireTool(t, python, "python3")
	ctx, cancel := context.WithTimeout(t.Context(), clientTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, python, "-c", "import "+module).CombinedOutput(); err != nil {
		t.Fatalf("%s cannot import %s: apt-get install %s\n%s", python, module, pkg, out)
	}
}

// runClient runs a client program from the module root, bounded by
// clientTimeout, logs its command line and output, and returns the output
// (stdout and stderr together).
func runClient(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), clientTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = h.root
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("did not finish within %v: %w", clientTimeout, err)
	}
	t.Logf("$ %s %s  (%v)\n%s", name, strings.Join(args, " "), time.Since(start).Round(time.Millisecond), &out)
	return out.String(), err
}

// atoi parses a decimal that a regexp already matched as digits.
func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}
