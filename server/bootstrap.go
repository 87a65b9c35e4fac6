package server

import (
	"bytes"
	"encoding/binary"

	"vbcache/protocol"
)

// The commands vbucket-aware (Couchbase) clients send while they connect:
// HELLO, GET_ERROR_MAP, SELECT_BUCKET and GET_CLUSTER_CONFIG.

// bucketName is the one bucket a node serves.
const bucketName = "default"

// errorMap is the GET_ERROR_MAP answer: no extended errors, only the
// standard statuses.
var errorMap = []byte(`{"version":1,"revision":1,"errors":{}}`)

// HELLO features this node agrees to. Only these two: agreeing to others
// (collections, alt requests, snappy, duplex, ...) changes what the client
// sends, and none of that is implemented.
const (
	featureXError       = 0x07
	featureSelectBucket = 0x08
)

// hello serves HELLO: the key is the client's user agent, the value a list
// of 2-byte features; the answer lists the ones agreed. A HELLO makes the
// connection vbucket-aware, and one from a peer node marks the connection
// as a peer's, whose requests are never forwarded again.
func (c *conn) hello(req *protocol.Request) {
	c.aware = true
	if bytes.HasPrefix(req.Key, []byte(peerAgent)) {
		c.claimsPeer = true
		c.peer = len(c.srv.cfg.Users) == 0 // else once it authenticates as the peer user
	}
	var agreed []byte
	for v := req.Value; len(v) >= 2; v = v[2:] {
		switch f := binary.BigEndian.Uint16(v); f {
		case featureXError, featureSelectBucket:
			agreed = binary.BigEndian.AppendUint16(agreed, f)
		}
	}
	c.reply(req, protocol.StatusOK, 0, nil, nil, agreed)
}

// replyJSON answers req with a JSON value, or with a temporary failure if
// there is none yet (a cluster node before its first map).
func (c *conn) replyJSON(req *protocol.Request, v []byte) {
	if v == nil {
		c.fail(req, protocol.StatusTempFailure)
		return
	}
	c.wbuf = protocol.AppendFrame(c.wbuf, &protocol.Frame{
		Magic: protocol.MagicResponse, Opcode: req.Opcode, DataType: protocol.DataTypeJSON,
		Opaque: req.Opaque, Value: v,
	})
}
