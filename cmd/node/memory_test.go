package main

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"vbcache/protocol"
)

// TestMemoryStaysBounded loads several times -memory-limit of mixed-size
// items into the real binary and checks that its resident memory stays
// within the limit plus the documented overhead (runtimeOverhead and
// indexBytesPerItem; one connection), while eviction does its work.
func TestMemoryStaysBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 200 MB")
	}
	const limit = 32 << 20
	bin := buildNode(t)
	cmd := exec.Command(bin, "-listen", "127.0.0.1:0", "-memory-limit", "32MiB")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := waitListening(t, stderr)
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReaderSize(nc, 64<<10)

	rng := rand.New(rand.NewPCG(1, 2))
	value := make([]byte, 100<<10)
	extras := make([]byte, 8)
	var written, peak int64
	for batch := 0; written < 200<<20; batch++ {
		var out []byte
		for range 64 {
			// Sizes spread over two orders of magnitude: the mix that
			// fragments a heap most.
			size := 100 + rng.IntN(len(value)-100)
			if rng.IntN(4) > 0 {
				size = 100 + rng.IntN(2000)
			}
			key := fmt.Sprintf("key:%d", rng.IntN(1_000_000))
			out = protocol.AppendFrame(out, &protocol.Frame{Magic: protocol.MagicRequest, Opcode: protocol.OpSetQ,
				Extras: extras, Key: []byte(key), Value: value[:size]})
			written += int64(size)
		}
		out = protocol.AppendHeader(out, protocol.MagicRequest, protocol.OpNoop, 0, 0, 0, 0, 0, 0, 0)
		if _, err := nc.Write(out); err != nil {
			t.Fatal(err)
		}
		for {
			h := readResponse(t, r)
			if h.Opcode == protocol.OpNoop {
				break
			}
			t.Fatalf("SETQ failed: status %#x", h.Status())
		}
		if batch%50 == 0 {
			peak = max(peak, rss(t, cmd.Process.Pid))
		}
	}
	peak = max(peak, rss(t, cmd.Process.Pid))
	stats := stats(t, nc, r)
	items, _ := strconv.ParseInt(stats["curr_items"], 10, 64)
	bound := limit + runtimeOverhead + indexBytesPerItem*items + 16<<10
	t.Logf("wrote %d MiB; peak RSS %d MiB (bound %d MiB: limit %d MiB + %d MiB + %d items); bytes %s evictions %s",
		written>>20, peak>>20, bound>>20, limit>>20, runtimeOverhead>>20, items, stats["bytes"], stats["evictions"])
	if n, _ := strconv.Atoi(stats["evictions"]); n == 0 {
		t.Error("no evictions counted")
	}
	if b, _ := strconv.Atoi(stats["bytes"]); b > limit {
		t.Errorf("store holds %d bytes over its %d limit", b, limit)
	}
	if peak > bound {
		t.Errorf("peak RSS %d MiB over the documented bound %d MiB", peak>>20, bound>>20)
	}
}

func readResponse(t *testing.T, r io.Reader) protocol.Header {
	t.Helper()
	hdr := make([]byte, protocol.HeaderLen)
	if _, err := io.ReadFull(r, hdr); err != nil {
		t.Fatal(err)
	}
	h := protocol.ParseHeader(hdr)
	if _, err := io.CopyN(io.Discard, r, int64(h.BodyLen)); err != nil {
		t.Fatal(err)
	}
	return h
}

func stats(t *testing.T, w io.Writer, r io.Reader) map[string]string {
	t.Helper()
	w.Write(protocol.AppendHeader(nil, protocol.MagicRequest, protocol.OpStat, 0, 0, 0, 0, 0, 0, 0))
	m := map[string]string{}
	for {
		hdr := make([]byte, protocol.HeaderLen)
		if _, err := io.ReadFull(r, hdr); err != nil {
			t.Fatal(err)
		}
		h := protocol.ParseHeader(hdr)
		body := make([]byte, h.BodyLen)
		io.ReadFull(r, body)
		if h.KeyLen == 0 {
			return m
		}
		m[string(body[:h.KeyLen])] = string(body[h.KeyLen:])
	}
}

// rss returns the resident memory of a process in bytes.
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
