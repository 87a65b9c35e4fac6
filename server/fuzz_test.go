package server

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"vbcache/protocol"
	"vbcache/store"
)

// FuzzConn feeds arbitrary bytes to a served connection. Whatever arrives,
// the connection must not panic or hang: once the client stops sending, the
// connection answers what it could parse and either waits for more or
// closes, and the server keeps serving others.
func FuzzConn(f *testing.F) {
	f.Add(bytes.Join([][]byte{
		frame(protocol.OpSet, "k", "v", setExtras(1, 0), 1, 0),
		frame(protocol.OpGetKQ, "k", "", nil, 2, 0),
		frame(protocol.OpIncrement, "n", "", arithExtras(1, 5, 0), 3, 0),
		frame(protocol.OpAppendQ, "k", "w", nil, 4, 0),
		frame(protocol.OpStat, "", "", nil, 5, 0),
		frame(protocol.OpNoop, "", "", nil, 6, 0),
	}, nil))
	f.Add(frame(protocol.OpFlush, "", "", u32(10), 1, 0))
	f.Add(protocol.AppendHeader(nil, protocol.MagicRequest, protocol.OpSet, 3, 8, 0, 0, 0xffffffff, 1, 0))
	f.Add([]byte("get k\r\n"))

	st, err := store.New(store.Config{MemoryLimit: 8 << 20, SweepInterval: -1})
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	srv, err := New(Config{Store: st, MaxItemSize: 64 << 10, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		client, server := net.Pipe()
		if !srv.startConn(server) {
			t.Fatal("server closed")
		}
		drained := make(chan struct{})
		go func() {
			io.Copy(io.Discard, client)
			close(drained)
		}()
		client.SetWriteDeadline(time.Now().Add(5 * time.Second))
		client.Write(in) // the server may close early on bad input
		// Half a frame leaves the server waiting for more, which is right;
		// closing our side must end the connection promptly.
		client.Close()
		select {
		case <-drained:
		case <-time.After(5 * time.Second):
			t.Fatal("connection did not end after the client closed")
		}
		deadline := time.Now().Add(5 * time.Second)
		for srv.currConns.Load() != 0 {
			if time.Now().After(deadline) {
				t.Fatal("connection goroutine did not end")
			}
			time.Sleep(time.Millisecond)
		}
	})
}
