//go:build linux

package e2e

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Binary protocol framing, as in /work/shared/PROTOCOL.md. The harness
// decodes frames itself rather than with the project's protocol package, so a
// bug there cannot hide from the tests.
const (
	headerLen     = 24
	magicRequest  = 0x80
	magicResponse = 0x81
)

var opcodeNames = map[uint8]string{
	0x00: "GET", 0x01: "SET", 0x02: "ADD", 0x03: "REPLACE", 0x04: "DELETE",
	0x05: "INCREMENT", 0x06: "DECREMENT", 0x07: "QUIT", 0x08: "FLUSH", 0x09: "GETQ",
	0x0a: "NOOP", 0x0b: "VERSION", 0x0c: "GETK", 0x0d: "GETKQ", 0x0e: "APPEND",
	0x0f: "PREPEND", 0x10: "STAT", 0x11: "SETQ", 0x12: "ADDQ", 0x13: "REPLACEQ",
	0x14: "DELETEQ", 0x15: "INCREMENTQ", 0x16: "DECREMENTQ", 0x17: "QUITQ",
	0x18: "FLUSHQ", 0x19: "APPENDQ", 0x1a: "PREPENDQ", 0x1b: "VERBOSITY",
	0x1c: "TOUCH", 0x1d: "GAT", 0x1e: "GATQ", 0x1f: "HELLO",
	0x20: "SASL_LIST_MECHS", 0x21: "SASL_AUTH", 0x22: "SASL_STEP", 0x23: "GATK",
	0x24: "GATKQ", 0x3d: "SET_VBUCKET", 0x3e: "GET_VBUCKET", 0x3f: "DEL_VBUCKET",
	0x89: "SELECT_BUCKET", 0xb5: "GET_CLUSTER_CONFIG", 0xfe: "GET_ERROR_MAP",
}

var statusNames = map[uint16]string{
	0x00: "ok", 0x01: "not-found", 0x02: "exists", 0x03: "too-large", 0x04: "invalid",
	0x05: "not-stored", 0x06: "non-numeric", 0x07: "not-my-vbucket", 0x08: "no-bucket",
	0x20: "auth-error", 0x21: "auth-continue", 0x81: "unknown-command",
	0x82: "out-of-memory", 0x83: "not-supported", 0x84: "internal-error",
	0x85: "busy", 0x86: "temporary-failure",
}

func opcodeName(op uint8) string {
	if name, ok := opcodeNames[op]; ok {
		return name
	}
	return fmt.Sprintf("0x%02x", op)
}

// statusLabel is a status's short name, or its hex value if it has none.
func statusLabel(s uint16) string {
	if name, ok := statusNames[s]; ok {
		return name
	}
	return fmt.Sprintf("0x%02x", s)
}

// statusName is a status's hex value and short name, e.g. 0x01(not-found).
func statusName(s uint16) string {
	if name, ok := statusNames[s]; ok {
		return fmt.Sprintf("0x%02x(%s)", s, name)
	}
	return fmt.Sprintf("0x%02x", s)
}

// header is a decoded 24-byte frame header. vbStatus is the vbucket id in a
// request and the status in a response.
type header struct {
	magic    uint8
	opcode   uint8
	keyLen   uint16
	extLen   uint8
	dataType uint8
	vbStatus uint16
	bodyLen  uint32
	opaque   uint32
	cas      uint64
}

func parseHeader(b []byte) header {
	return header{
		magic:    b[0],
		opcode:   b[1],
		keyLen:   binary.BigEndian.Uint16(b[2:]),
		extLen:   b[4],
		dataType: b[5],
		vbStatus: binary.BigEndian.Uint16(b[6:]),
		bodyLen:  binary.BigEndian.Uint32(b[8:]),
		opaque:   binary.BigEndian.Uint32(b[12:]),
		cas:      binary.BigEndian.Uint64(b[16:]),
	}
}

// maxKeyShown bounds the key bytes kept per frame for the log.
const maxKeyShown = 64

// frameDecoder splits one direction of a connection into frames, whatever
// the chunks the bytes arrive in. It keeps at most maxKeyShown key bytes of
// a frame and skips the rest of the body.
type frameDecoder struct {
	magic  uint8 // the magic every frame in this direction must have
	buf    [headerLen]byte
	nbuf   int    // header bytes of the current frame read so far
	h      header // the current frame's header, once nbuf == headerLen
	body   int    // body bytes of the current frame read so far
	key    []byte
	broken string // why the stream is not binary protocol; nothing more is decoded
}

// feed decodes p and calls emit once for each frame it completes.
func (d *frameDecoder) feed(p []byte, emit func(h header, key []byte)) {
	for len(p) > 0 && d.broken == "" {
		if d.nbuf < headerLen {
			n := copy(d.buf[d.nbuf:], p)
			d.nbuf += n
			p = p[n:]
			if d.nbuf < headerLen {
				return
			}
			d.h = parseHeader(d.buf[:])
			d.body, d.key = 0, d.key[:0]
			if d.h.magic != d.magic {
				d.broken = fmt.Sprintf("magic 0x%02x, want 0x%02x (header % x)", d.h.magic, d.magic, d.buf)
				return
			}
			if int(d.h.extLen)+int(d.h.keyLen) > int(d.h.bodyLen) {
				d.broken = fmt.Sprintf("extras %d + key %d > body %d", d.h.extLen, d.h.keyLen, d.h.bodyLen)
				return
			}
		}
		n := min(len(p), int(d.h.bodyLen)-d.body)
		keyFrom := int(d.h.extLen)
		keyTo := min(keyFrom+int(d.h.keyLen), keyFrom+maxKeyShown)
		if lo, hi := max(d.body, keyFrom), min(d.body+n, keyTo); lo < hi {
			d.key = append(d.key, p[lo-d.body:hi-d.body]...)
		}
		d.body += n
		p = p[n:]
		if d.body == int(d.h.bodyLen) {
			emit(d.h, d.key)
			d.nbuf = 0
		}
	}
}

// describe renders one frame for the log.
func describe(h header, key []byte) string {
	var b strings.Builder
	b.WriteString(opcodeName(h.opcode))
	if h.magic == magicResponse {
		b.WriteString(" status=" + statusName(h.vbStatus))
	} else if h.vbStatus != 0 {
		fmt.Fprintf(&b, " vb=%d", h.vbStatus)
	}
	if h.keyLen > 0 {
		fmt.Fprintf(&b, " key=%q", key)
		if int(h.keyLen) > len(key) {
			fmt.Fprintf(&b, "…(%d bytes)", h.keyLen)
		}
	}
	fmt.Fprintf(&b, " extras=%d body=%d opaque=%#x", h.extLen, h.bodyLen, h.opaque)
	if h.cas != 0 {
		fmt.Fprintf(&b, " cas=%#x", h.cas)
	}
	if h.dataType != 0 {
		fmt.Fprintf(&b, " datatype=%#x", h.dataType)
	}
	return b.String()
}

// recentFrames is how many of the last frames a tap keeps for a failure log.
const recentFrames = 60

// responseKey counts responses by opcode and status.
type responseKey struct {
	opcode uint8
	status uint16
}

// tap is a loopback TCP proxy between a test's clients and its server. It
// forwards bytes unchanged and decodes the frames in both directions, to log
// which opcodes a client sent and what the server answered. Its goroutines
// are owned by the tap and stopped by close.
type tap struct {
	upstream string
	ln       net.Listener
	wg       sync.WaitGroup // the accept loop and every copy goroutine

	mu        sync.Mutex // guards the fields below
	closed    bool
	conns     []net.Conn // every connection opened, both sides; closed by close
	requests  map[uint8]int
	responses map[responseKey]int
	recent    []string // the last recentFrames frames, oldest first
	problems  []string // streams that were not binary protocol, dial errors
}

// startTap starts a tap in front of upstream and stops it in t.Cleanup,
// where it logs a summary of the traffic (and the last frames if the test
// failed).
func startTap(t *testing.T, upstream string) *tap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{
		upstream:  upstream,
		ln:        ln,
		requests:  make(map[uint8]int),
		responses: make(map[responseKey]int),
	}
	tp.wg.Go(tp.acceptLoop)
	t.Cleanup(func() {
		tp.close()
		t.Log(tp.summary())
		if t.Failed() {
			t.Logf("last %d frames through the tap (c<n> is the connection):\n%s",
				len(tp.recent), strings.Join(tp.recent, "\n"))
		}
	})
	return tp
}

// Addr is the address clients connect to.
func (tp *tap) Addr() string { return tp.ln.Addr().String() }

func (tp *tap) acceptLoop() {
	for id := 1; ; id++ {
		client, err := tp.ln.Accept()
		if err != nil {
			return // closed
		}
		srv, err := net.DialTimeout("tcp", tp.upstream, 5*time.Second)
		tp.mu.Lock()
		if err != nil {
			tp.problems = append(tp.problems, fmt.Sprintf("c%d: dialing the server: %v", id, err))
		}
		if err != nil || tp.closed {
			tp.mu.Unlock()
			client.Close()
			if srv != nil {
				srv.Close()
			}
			continue
		}
		tp.conns = append(tp.conns, client, srv)
		tp.mu.Unlock()
		tp.wg.Go(func() { tp.pipe(id, magicRequest, srv, client) })
		tp.wg.Go(func() { tp.pipe(id, magicResponse, client, srv) })
	}
}

// pipe copies src to dst, decoding frames of the given magic, until either
// side fails; then it closes both, which also ends the opposite pipe.
func (tp *tap) pipe(id int, magic uint8, dst, src net.Conn) {
	defer src.Close()
	defer dst.Close()
	dec := frameDecoder{magic: magic}
	arrow := "->"
	if magic == magicResponse {
		arrow = "<-"
	}
	emit := func(h header, key []byte) { tp.record(fmt.Sprintf("c%d %s ", id, arrow), h, key) }
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			wasBroken := dec.broken != ""
			dec.feed(buf[:n], emit)
			if !wasBroken && dec.broken != "" {
				tp.problem(fmt.Sprintf("c%d %s not binary protocol: %s", id, arrow, dec.broken))
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (tp *tap) record(prefix string, h header, key []byte) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if h.magic == magicRequest {
		tp.requests[h.opcode]++
	} else {
		tp.responses[responseKey{h.opcode, h.vbStatus}]++
	}
	if len(tp.recent) == recentFrames {
		tp.recent = slices.Delete(tp.recent, 0, 1)
	}
	tp.recent = append(tp.recent, prefix+describe(h, key))
}

func (tp *tap) problem(s string) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	tp.problems = append(tp.problems, s)
}

// close stops accepting, closes every connection and waits for the tap's
// goroutines. It is safe to call more than once.
func (tp *tap) close() {
	tp.ln.Close()
	tp.mu.Lock()
	tp.closed = true
	for _, c := range tp.conns {
		c.Close()
	}
	tp.mu.Unlock()
	tp.wg.Wait()
}

// summary renders the opcode and status counts, e.g.
//
//	tap: client sent: GET×3 SET×2 NOOP×1
//	tap: server answered: GET ok×2 not-found×1; SET ok×2; NOOP ok×1
func (tp *tap) summary() string {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	var sent []string
	for _, op := range slices.Sorted(maps.Keys(tp.requests)) {
		sent = append(sent, fmt.Sprintf("%s×%d", opcodeName(op), tp.requests[op]))
	}
	keys := slices.SortedFunc(maps.Keys(tp.responses), func(a, b responseKey) int {
		return cmp.Or(cmp.Compare(a.opcode, b.opcode), cmp.Compare(a.status, b.status))
	})
	var answered []string
	for i, k := range keys {
		count := fmt.Sprintf("%s×%d", statusLabel(k.status), tp.responses[k])
		if i > 0 && keys[i-1].opcode == k.opcode {
			answered[len(answered)-1] += " " + count
		} else {
			answered = append(answered, opcodeName(k.opcode)+" "+count)
		}
	}
	out := fmt.Sprintf("tap: client sent: %s\ntap: server answered: %s",
		strings.Join(sent, " "), strings.Join(answered, "; "))
	for _, p := range tp.problems {
		out += "\ntap: " + p
	}
	return out
}
