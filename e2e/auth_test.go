package e2e

import (
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
