package cluster

import (
	"context"
	"log/slog"
	"strings"
)

// Gossip encryption. With Config.GossipKey, memberlist encrypts every
// packet and stream with AES-GCM and refuses those that are not encrypted
// with the key; without it, it refuses encrypted ones. Either way a node
// whose key differs from the cluster's cannot join, and memberlist's
// errors say so only obliquely; keyMismatch and keyRefusal turn them into
// reasons an operator can act on. They match memberlist's messages
// (v0.7), which TestGossipKey pins.

// keyErrors are memberlist's messages about a gossip key that differs, with
// what each means to the node whose join failed (joiner) and to the node
// that refused it (refuser).
var keyErrors = []struct{ msg, joiner, refuser string }{
	{"no installed keys could decrypt",
		"the seed's gossip key differs from this node's",
		"a node with another gossip key was refused"},
	{"remote state is encrypted and encryption is not configured",
		"the cluster encrypts gossip and this node has no gossip key",
		"a node with a gossip key was refused; this node has none"},
	{"encryption is configured but remote state is not encrypted",
		"this node has a gossip key and the seed has none",
		"a node without the gossip key was refused"},
}

// keyMismatch explains a failed join caused by a gossip key that differs
// from the seed's, or returns "".
func keyMismatch(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	for _, k := range keyErrors {
		if strings.Contains(msg, k.msg) {
			return k.joiner
		}
	}
	return ""
}

// keyRefusal explains a memberlist log line about gossip refused for its
// encryption, or returns "".
func keyRefusal(line string) string {
	if strings.HasPrefix(line, "Decrypt packet failed") {
		return "gossip key mismatch: a packet not encrypted with this node's gossip key was refused"
	}
	if !strings.HasPrefix(line, "failed to receive") {
		return "" // not about what another node sent
	}
	for _, k := range keyErrors {
		if strings.Contains(line, k.msg) {
			return "gossip key mismatch: " + k.refuser
		}
	}
	return ""
}

// keyRefused reports whether a failed join of seeds failed for the gossip
// key. It logs that as an error when the reason first appears, and at
// Debug while it persists: the join is retried every Config.JoinRetry.
// New and then the loop goroutine call it.
func (c *Cluster) keyRefused(seeds []string, err error) bool {
	why := keyMismatch(err)
	if why == "" {
		c.joinRefusal = ""
		return false
	}
	level := slog.LevelDebug
	if why != c.joinRefusal {
		level = slog.LevelError
	}
	c.joinRefusal = why
	c.log.Log(context.Background(), level, "cannot join the cluster: gossip key mismatch; every node needs the same gossip key",
		"seeds", strings.Join(seeds, ","), "reason", why, "err", err)
	return true
}
