package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/memberlist"
)

// meta is what a node tells the others about itself in its memberlist node
// metadata (at most memberlist.MetaMaxSize bytes, JSON).
type meta struct {
	KV       string `json:"kv"`             // memcached binary protocol address
	HTTP     string `json:"http,omitempty"` // HTTP address, if any
	Start    int64  `json:"start"`          // Unix nanoseconds the node started; the oldest member coordinates
	VBuckets int    `json:"vb"`             // the node's -vbuckets; must match the cluster's
	Rev      int64  `json:"rev"`            // rev of the map the node holds
	Ready    int64  `json:"ready"`          // highest rev whose streams this node has backfilled
	Leaving  bool   `json:"leaving,omitempty"`
	Peer     string `json:"peer,omitempty"` // Config.PeerCheck
}

func (m *meta) encode() []byte {
	b, _ := json.Marshal(m) // a struct of strings and integers cannot fail
	return b
}

func decodeMeta(n *memberlist.Node) (meta, error) {
	var m meta
	if err := json.Unmarshal(n.Meta, &m); err != nil {
		return m, fmt.Errorf("node %s: unreadable metadata: %w", n.Name, err)
	}
	if m.KV == "" || m.VBuckets == 0 {
		return m, fmt.Errorf("node %s: metadata without kv address or vbucket count", n.Name)
	}
	return m, nil
}

// slogWriter turns memberlist's log lines ("[WARN] memberlist: ...") into
// slog records at the matching level.
type slogWriter struct{ log *slog.Logger }

func newMemberlistLogger(l *slog.Logger) *log.Logger {
	return log.New(slogWriter{l}, "", 0)
}

func (w slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{
		"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError,
	} {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			line, level = strings.TrimSpace(rest), l
			break
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	if why := keyRefusal(line); why != "" {
		w.log.Log(context.Background(), level, line, "component", "memberlist", "reason", why)
		return len(p), nil
	}
	w.log.Log(context.Background(), level, line, "component", "memberlist")
	return len(p), nil
}

var _ io.Writer = slogWriter{}
