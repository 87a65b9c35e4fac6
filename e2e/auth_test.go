//go:build linux

package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Opcodes and statuses the raw client below uses.
const (
	opGet           = 0x00
	opSet           = 0x01
	opSASLListMechs = 0x20
	opSASLAuth      = 0x21

	statusOK        = 0x00
	statusAuthError = 0x20
)

// TestAuth starts the node with -auth-file and checks SASL PLAIN over a raw
// socket (opcodes 0x20/0x21, status 0x20 for a refusal), then runs the whole
// bmemcached suite over authenticated connections.
func TestAuth(t *testing.T) {
	if h.memcached {
		t.Skip("E2E_SERVER=memcached: memcached's SASL needs a Cyrus SASL database, not a user:password file")
	}
	file := filepath.Join(t.TempDir(), "users")
	users := "# e2e users\nalice:wonderland\nbob:pa:ss word\n"
	if err := os.WriteFile(file, []byte(users), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := connectAddr(t, startServer(t, "-auth-file", file))

	t.Run("unauthenticated GET and SET answer 0x20", func(t *testing.T) {
		c := dialRaw(t, addr)
		if st, _ := c.do(t, opGet, "k", nil, nil); st != statusAuthError {
			t.Errorf("GET before auth: status %s, want %s", statusName(st), statusName(statusAuthError))
		}
		if st, _ := c.do(t, opSet, "k", make([]byte, 8), []byte("v")); st != statusAuthError {
			t.Errorf("SET before auth: status %s, want %s", statusName(st), statusName(statusAuthError))
		}
	})

	t.Run("SASL_LIST_MECHS offers PLAIN", func(t *testing.T) {
		c := dialRaw(t, addr)
		st, body := c.do(t, opSASLListMechs, "", nil, nil)
		if st != statusOK || !strings.Contains(string(body), "PLAIN") {
			t.Errorf("SASL_LIST_MECHS: status %s, mechanisms %q; want ok and PLAIN", statusName(st), body)
		}
	})

	for _, tc := range []struct {
		name, user, pass string
		ok               bool
	}{
		{"right password", "alice", "wonderland", true},
		{"password with colon and space", "bob", "pa:ss word", true},
		{"wrong password", "alice", "wonderlanD", false},
		{"empty password", "alice", "", false},
		{"password prefix", "bob", "pa", false},
		{"unknown user", "mallory", "wonderland", false},
	} {
		t.Run("PLAIN "+tc.name, func(t *testing.T) {
			c := dialRaw(t, addr)
			st, body := c.do(t, opSASLAuth, "PLAIN", nil, []byte("\x00"+tc.user+"\x00"+tc.pass))
			if tc.ok {
				if st != statusOK {
					t.Fatalf("SASL_AUTH: status %s (%q), want ok", statusName(st), body)
				}
				key := "auth-" + tc.user
				if st, _ := c.do(t, opSet, key, make([]byte, 8), []byte("v")); st != statusOK {
					t.Errorf("SET after auth: status %s, want ok", statusName(st))
				}
				if st, body := c.do(t, opGet, key, nil, nil); st != statusOK || !strings.HasSuffix(string(body), "v") {
					t.Errorf("GET after auth: status %s body %q, want ok and v", statusName(st), body)
				}
				return
			}
			if st != statusAuthError {
				t.Fatalf("SASL_AUTH: status %s, want %s", statusName(st), statusName(statusAuthError))
			}
			// The server may close the connection now; if it does not, it
			// must still refuse to serve.
			if st, ok := c.tryDo(t, opGet, "k", nil, nil); ok && st != statusAuthError {
				t.Errorf("GET after a refused auth: status %s, want %s", statusName(st), statusName(statusAuthError))
			}
		})
	}

	t.Run("bmemcached suite as alice", func(t *testing.T) {
		requirePythonModule(t, "bmemcached", "python3-binary-memcached")
		out, err := runClient(t, python, "tests/clients/bmemcached_suite.py", addr,
			"--username", "alice", "--password", "wonderland")
		checkUnittest(t, "bmemcached suite with auth", out, err)
	})
}

// rawConn is a minimal binary-protocol client for checks no library makes.
type rawConn struct {
	c      net.Conn
	opaque uint32
}

// dialRaw connects to addr; every exchange must finish within 10 s. The
// connection is closed in t.Cleanup.
func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{c: c}
}

// do sends one request and returns the response's status and value. It fails
// the test on an I/O error or a malformed response.
func (r *rawConn) do(t *testing.T, op uint8, key string, extras, value []byte) (status uint16, val []byte) {
	t.Helper()
	status, val, err := r.exchange(op, key, extras, value)
	if err != nil {
		t.Fatalf("%s: %v", opcodeName(op), err)
	}
	return status, val
}

// tryDo is do for a connection the server may have closed: ok is false if
// it did.
func (r *rawConn) tryDo(t *testing.T, op uint8, key string, extras, value []byte) (status uint16, ok bool) {
	t.Helper()
	status, _, err := r.exchange(op, key, extras, value)
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) {
		return 0, false
	}
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) && !opErr.Timeout() { // e.g. connection reset
			return 0, false
		}
		t.Fatalf("%s: %v", opcodeName(op), err)
	}
	return status, true
}

func (r *rawConn) exchange(op uint8, key string, extras, value []byte) (uint16, []byte, error) {
	r.opaque++
	bodyLen := len(extras) + len(key) + len(value)
	req := make([]byte, headerLen, headerLen+bodyLen)
	req[0] = magicRequest
	req[1] = op
	binary.BigEndian.PutUint16(req[2:], uint16(len(key)))
	req[4] = uint8(len(extras))
	binary.BigEndian.PutUint32(req[8:], uint32(bodyLen))
	binary.BigEndian.PutUint32(req[12:], r.opaque)
	req = append(append(append(req, extras...), key...), value...)

	if err := r.c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return 0, nil, err
	}
	if _, err := r.c.Write(req); err != nil {
		return 0, nil, err
	}
	var hdr [headerLen]byte
	if _, err := io.ReadFull(r.c, hdr[:]); err != nil {
		return 0, nil, err
	}
	resp := parseHeader(hdr[:])
	switch {
	case resp.magic != magicResponse:
		return 0, nil, fmt.Errorf("response magic 0x%02x, want 0x%02x", resp.magic, magicResponse)
	case resp.opcode != op:
		return 0, nil, fmt.Errorf("response opcode %s, want %s", opcodeName(resp.opcode), opcodeName(op))
	case resp.opaque != r.opaque:
		return 0, nil, fmt.Errorf("response opaque %#x, want %#x", resp.opaque, r.opaque)
	case resp.bodyLen > 1<<20 || int(resp.extLen)+int(resp.keyLen) > int(resp.bodyLen):
		return 0, nil, fmt.Errorf("malformed response header %+v", resp)
	}
	body := make([]byte, resp.bodyLen)
	if _, err := io.ReadFull(r.c, body); err != nil {
		return 0, nil, err
	}
	return resp.vbStatus, body[int(resp.extLen)+int(resp.keyLen):], nil
}

// TestClusterAuth runs a 3-node cluster of the binary with -auth-file,
// -peer-user and a gossip key (from VBCACHE_GOSSIP_KEY) on every node: a
// client with a wrong password is refused on every node; an authenticated
// legacy client writes through every node and reads every key back through
// every node, which takes the nodes' authenticated forwarding; a node
// started with another -gossip-key cannot join, and both it and the
// cluster say why.
func TestClusterAuth(t *testing.T) {
	requireNode(t)
	file := filepath.Join(t.TempDir(), "users")
	users := "vbcache-node:" + randomBase64(t, 24) + "\nalice:wonderland\n"
	if err := os.WriteFile(file, []byte(users), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VBCACHE_GOSSIP_KEY", randomBase64(t, 32))
	nodes, _ := startCluster(t, 3, "-auth-file", file, "-peer-user", "vbcache-node")
	addrs := make([]string, len(nodes))
	for i, nd := range nodes {
		addrs[i] = connectAddr(t, nd.kv)
	}

	t.Run("wrong password on every node", func(t *testing.T) {
		for i, addr := range addrs {
			c := dialRaw(t, addr)
			if st, _ := c.do(t, opSASLAuth, "PLAIN", nil, []byte("\x00alice\x00wonderlanD")); st != statusAuthError {
				t.Fatalf("%s: SASL_AUTH with a wrong password: status %s, want %s", nodes[i].name, statusName(st), statusName(statusAuthError))
			}
			if st, ok := c.tryDo(t, opGet, "k", nil, nil); ok && st != statusAuthError {
				t.Errorf("%s: GET after a refused auth: status %s, want %s", nodes[i].name, statusName(st), statusName(statusAuthError))
			}
		}
	})

	legacy := func(t *testing.T, prefix string) {
		conns := make([]*rawConn, len(addrs))
		for i, addr := range addrs {
			conns[i] = dialRaw(t, addr)
			if st, body := conns[i].do(t, opSASLAuth, "PLAIN", nil, []byte("\x00alice\x00wonderland")); st != statusOK {
				t.Fatalf("%s: SASL_AUTH: status %s (%q)", nodes[i].name, statusName(st), body)
			}
		}
		const keys = 60
		for k := range keys {
			key, i := fmt.Sprintf("%s-%d", prefix, k), k%len(conns)
			if st, _ := conns[i].do(t, opSet, key, make([]byte, 8), []byte("v-"+key)); st != statusOK {
				t.Fatalf("SET %s through %s: status %s", key, nodes[i].name, statusName(st))
			}
		}
		for k := range keys {
			key := fmt.Sprintf("%s-%d", prefix, k)
			for i, c := range conns {
				if st, body := c.do(t, opGet, key, nil, nil); st != statusOK || !strings.HasSuffix(string(body), "v-"+key) {
					t.Fatalf("GET %s through %s: status %s body %q", key, nodes[i].name, statusName(st), body)
				}
			}
		}
	}
	t.Run("authenticated legacy client through every node", func(t *testing.T) { legacy(t, "before") })

	t.Run("node with another gossip key", func(t *testing.T) {
		kv, err := freeLoopbackAddr()
		if err != nil {
			t.Fatal(err)
		}
		gossip, err := freeGossipAddr()
		if err != nil {
			t.Fatal(err)
		}
		// The command line wins over VBCACHE_GOSSIP_KEY.
		s, err := launch(kv, []string{"-gossip", gossip, "-name", "intruder", "-join", nodes[0].gossip,
			"-auth-file", file, "-peer-user", "vbcache-node", "-gossip-key", randomBase64(t, 32)})
		if err != nil {
			t.Fatalf("starting the intruder: %v\n%s", err, s.out)
		}
		defer s.stop(t)
		waitOutput(t, s.out, "cannot join the cluster: gossip key mismatch", "the seed's gossip key differs from this node's")
		waitOutput(t, nodes[0].srv.out, "gossip key mismatch: a node with another gossip key was refused")
		v, err := getCluster(t.Context(), nodes[0].http)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range v.Members {
			if m.Name == "intruder" {
				t.Errorf("node0 lists the intruder as %s", m.State)
			}
		}
		if len(v.Members) != len(nodes) {
			t.Errorf("node0 sees %d members, want %d", len(v.Members), len(nodes))
		}
	})

	t.Run("still serving", func(t *testing.T) { legacy(t, "after") })
}

// randomBase64 returns n random bytes in standard base64.
func randomBase64(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// waitOutput waits until a line of a process's output contains every one
// of parts.
func waitOutput(t *testing.T, out *lockedBuffer, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
	lines:
		for _, line := range strings.Split(out.String(), "\n") {
			for _, p := range parts {
				if !strings.Contains(line, p) {
					continue lines
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no output line with %q", parts)
		}
		<-tick.C
	}
}
