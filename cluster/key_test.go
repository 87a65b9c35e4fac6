package cluster

import (
	"errors"
	"log/slog"
	"testing"
)

func TestGossipKeyLength(t *testing.T) {
	for _, n := range []int{1, 15, 17, 31, 33, 64} {
		_, err := New(Config{Gossip: "127.0.0.1:0", KV: "127.0.0.1:1", GossipKey: make([]byte, n), Logger: slog.New(slog.DiscardHandler)})
		if !errors.Is(err, ErrBadGossipKey) {
			t.Errorf("%d-byte key: %v, want ErrBadGossipKey", n, err)
		}
	}
	for _, n := range []int{16, 24, 32} {
		c, err := New(Config{Gossip: "127.0.0.1:0", KV: "127.0.0.1:1", GossipKey: make([]byte, n), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatalf("%d-byte key: %v", n, err)
		}
		c.Kill()
	}
}
