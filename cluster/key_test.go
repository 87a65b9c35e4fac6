package cluster

import (
	"errors"
	"log/slog"
	"strings"
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

// TestMemberlistLogThroughSlog: memberlist's log lines become slog records
// at their level, marked component=memberlist, and a refusal for the
// gossip key says so.
func TestMemberlistLogThroughSlog(t *testing.T) {
	for _, tc := range []struct {
		line, want string
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:1", `{"level":"DEBUG","msg":"Stream connection from=127.0.0.1:1","component":"memberlist"}`},
		{"[WARN] memberlist: Refuting a suspect message", `{"level":"WARN","msg":"Refuting a suspect message","component":"memberlist"}`},
		{"[ERR] memberlist: failed to receive: no installed keys could decrypt the message from=127.0.0.1:2",
			`{"level":"ERROR","msg":"failed to receive: no installed keys could decrypt the message from=127.0.0.1:2","component":"memberlist","reason":"gossip key mismatch: a node with another gossip key was refused"}`},
		{"[ERR] memberlist: failed to receive: encryption is configured but remote state is not encrypted from=127.0.0.1:3",
			`{"level":"ERROR","msg":"failed to receive: encryption is configured but remote state is not encrypted from=127.0.0.1:3","component":"memberlist","reason":"gossip key mismatch: a node without the gossip key was refused"}`},
		{"[DEBUG] memberlist: failed to join 127.0.0.1:4: no installed keys could decrypt the message",
			`{"level":"DEBUG","msg":"failed to join 127.0.0.1:4: no installed keys could decrypt the message","component":"memberlist"}`},
	} {
		var out strings.Builder
		log := slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{
			Level:       slog.LevelDebug,
			ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr { return dropTime(a) },
		}))
		newMemberlistLogger(log).Print(tc.line)
		if got := strings.TrimSpace(out.String()); got != tc.want {
			t.Errorf("%q logged\n%s\nwant\n%s", tc.line, got, tc.want)
		}
	}
}

func dropTime(a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}
