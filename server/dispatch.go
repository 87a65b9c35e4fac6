package server

import (
	"bytes"
	"crypto/subtle"
	"encoding/binary"

	"vbcache/protocol"
	"vbcache/store"
)

// maxRelativeExp is memcached's boundary between relative and absolute
// expiration times: 30 days in seconds.
const maxRelativeExp = 60 * 60 * 24 * 30

// arithNoCreate in an INCREMENT/DECREMENT expiration means "fail if missing".
const arithNoCreate = 0xffffffff

// handle serves one request, appending its response (if any) to wbuf or,
// when another node serves it, leaving a slot for the response. It reports
// whether the connection must close afterwards.
//
// /metrics counts a request by its response as that leaves (countOutput),
// or once its slot is filled (assemble); only a quiet request may answer
// nothing, which is counted here.
func (c *conn) handle(req *protocol.Request) (quit bool) {
	if !req.Opcode.IsQuiet() {
		return c.dispatch(req)
	}
	start, slots := len(c.wbuf), len(c.slots)
	quit = c.dispatch(req)
	if len(c.wbuf) == start && len(c.slots) == slots {
		c.countSilent(req.Opcode)
	}
	return quit
}

// dispatch is handle without the counting.
func (c *conn) dispatch(req *protocol.Request) (quit bool) {
	op := req.Opcode
	if !op.Known() {
		c.fail(req, protocol.StatusUnknownCommand)
		return false
	}
	if !c.authed && !allowedBeforeAuth(op) {
		if c.claimsPeer {
			c.srv.refusePeer(c, "", refusedNoAuth)
		}
		c.fail(req, protocol.StatusAuthError)
		return false
	}
	if !wellFormed(req) {
		c.fail(req, protocol.StatusInvalidArgs)
		return false
	}
	if c.srv.cfg.Cluster != nil {
		switch {
		case keyed(op):
			done, rt, vb := c.route(req)
			if done {
				return false
			}
			if mutates(op) && len(rt.targets[vb]) > 0 {
				c.replicate(req, rt, vb)
				return false
			}
		case op.Loud() == protocol.OpFlush && !c.peer:
			c.flushCluster(req)
			return false
		}
	}
	return c.execute(req)
}

// execute serves a well-formed, authorised request on this node.
func (c *conn) execute(req *protocol.Request) (quit bool) {
	switch req.Opcode.Loud() {
	case protocol.OpGet, protocol.OpGetK, protocol.OpGAT, protocol.OpGATK:
		c.get(req)
	case protocol.OpTouch:
		c.touch(req)
	case protocol.OpSet:
		c.update(req, store.ModeSet)
	case protocol.OpAdd:
		c.update(req, store.ModeAdd)
	case protocol.OpReplace:
		c.update(req, store.ModeReplace)
	case protocol.OpAppend:
		c.update(req, store.ModeAppend)
	case protocol.OpPrepend:
		c.update(req, store.ModePrepend)
	case protocol.OpDelete:
		c.delete(req)
	case protocol.OpIncrement, protocol.OpDecrement:
		c.arith(req)
	case protocol.OpFlush:
		c.flushLocal(req)
		c.ok(req, 0)
	case protocol.OpNoop, protocol.OpVerbosity:
		c.ok(req, 0)
	case protocol.OpVersion:
		c.reply(req, protocol.StatusOK, 0, nil, nil, []byte(c.srv.cfg.Version))
	case protocol.OpQuit:
		c.ok(req, 0)
		return true
	case protocol.OpStat:
		c.stat(req)
	case protocol.OpSASLListMechs:
		c.reply(req, protocol.StatusOK, 0, nil, nil, []byte("PLAIN"))
	case protocol.OpSASLAuth:
		c.saslAuth(req)
	case protocol.OpHello:
		c.hello(req)
	case protocol.OpGetErrorMap:
		c.replyJSON(req, errorMap)
	case protocol.OpSelectBucket:
		if string(req.Key) != bucketName {
			c.fail(req, protocol.StatusNoBucket)
			return false
		}
		c.ok(req, 0)
	case protocol.OpGetClusterConfig:
		var config []byte
		if rt := c.srv.router.get(); rt != nil {
			config = rt.config
		}
		c.replyJSON(req, config)
	case protocol.OpGetVBucket:
		rt := c.srv.router.get()
		if rt == nil {
			c.fail(req, protocol.StatusTempFailure)
			return false
		}
		var v [4]byte
		binary.BigEndian.PutUint32(v[:], rt.vbState(req.VBucket))
		c.reply(req, protocol.StatusOK, 0, nil, nil, v[:])
	case protocol.OpSetVBucket:
		// vbucket states follow the cluster map, not commands.
		c.fail(req, protocol.StatusNotSupported)
	case protocol.OpSetWithMeta, protocol.OpSetQWithMeta, protocol.OpDelWithMeta, protocol.OpDelQWithMeta,
		protocol.OpDelVBucket:
		c.applyCopy(req)
	default:
		// Known to the codec but not served by this node (SASL_STEP).
		c.fail(req, protocol.StatusUnknownCommand)
	}
	return false
}

// allowedBeforeAuth lists the commands an unauthenticated connection may use.
func allowedBeforeAuth(op protocol.Opcode) bool {
	switch op {
	case protocol.OpNoop, protocol.OpVersion, protocol.OpSASLListMechs, protocol.OpSASLAuth, protocol.OpSASLStep,
		protocol.OpHello, protocol.OpGetErrorMap:
		return true
	}
	return false
}

// wellFormed checks key, extras and value lengths as memcached does for each
// command; a request that fails answers StatusInvalidArgs.
func wellFormed(req *protocol.Request) bool {
	ext, key, val := len(req.Extras), len(req.Key), len(req.Value)
	if key > protocol.MaxKeyLen {
		return false
	}
	switch req.Opcode.Loud() {
	case protocol.OpGet, protocol.OpGetK, protocol.OpDelete:
		return ext == 0 && key > 0 && val == 0
	case protocol.OpSet, protocol.OpAdd, protocol.OpReplace:
		return ext == 8 && key > 0
	case protocol.OpAppend, protocol.OpPrepend:
		return ext == 0 && key > 0
	case protocol.OpIncrement, protocol.OpDecrement:
		return ext == 20 && key > 0 && val == 0
	case protocol.OpTouch, protocol.OpGAT, protocol.OpGATK:
		return ext == 4 && key > 0 && val == 0
	case protocol.OpQuit, protocol.OpNoop, protocol.OpVersion, protocol.OpSASLListMechs:
		return ext == 0 && key == 0 && val == 0
	case protocol.OpFlush:
		return (ext == 0 || ext == 4) && key == 0 && val == 0
	case protocol.OpVerbosity:
		return ext == 4 && key == 0 && val == 0
	case protocol.OpStat:
		return ext == 0 && val == 0
	case protocol.OpSASLAuth, protocol.OpSASLStep, protocol.OpSelectBucket:
		return ext == 0 && key > 0
	case protocol.OpHello:
		return ext == 0 && val%2 == 0
	case protocol.OpGetErrorMap:
		return ext == 0 && key == 0 && val == 2
	case protocol.OpGetClusterConfig, protocol.OpGetVBucket:
		return key == 0 && val == 0
	}
	return true
}

// statusOf is the one place store errors become wire statuses.
func statusOf(err error) protocol.Status {
	switch err {
	case nil:
		return protocol.StatusOK
	case store.ErrNotFound:
		return protocol.StatusKeyNotFound
	case store.ErrExists:
		return protocol.StatusKeyExists
	case store.ErrNotStored:
		return protocol.StatusNotStored
	case store.ErrTooLarge:
		return protocol.StatusValueTooLarge
	case store.ErrNoMemory:
		return protocol.StatusOutOfMemory
	case store.ErrNonNumeric:
		return protocol.StatusNonNumeric
	}
	return protocol.StatusInternalError
}

// expiry turns a wire expiration into absolute Unix seconds: 0 is never,
// up to 30 days is relative to now, anything larger is already absolute.
func (c *conn) expiry(exp uint32) int64 {
	switch {
	case exp == 0:
		return 0
	case exp <= maxRelativeExp:
		return c.srv.cfg.Now() + int64(exp)
	}
	return int64(exp)
}

// reply appends a response to req with the given parts.
func (c *conn) reply(req *protocol.Request, s protocol.Status, cas uint64, extras, key, value []byte) {
	c.wbuf = protocol.AppendFrame(c.wbuf, &protocol.Frame{
		Magic: protocol.MagicResponse, Opcode: req.Opcode, VBucket: uint16(s),
		Opaque: req.Opaque, CAS: cas, Extras: extras, Key: key, Value: value,
	})
}

// ok acknowledges req with an empty success response unless it is quiet.
func (c *conn) ok(req *protocol.Request, cas uint64) {
	if !req.Opcode.IsQuiet() {
		c.wbuf = protocol.AppendHeader(c.wbuf, protocol.MagicResponse, req.Opcode, 0, 0, 0, 0, 0, req.Opaque, cas)
	}
}

// fail answers req with an error status; errors are sent for quiet commands
// too.
func (c *conn) fail(req *protocol.Request, s protocol.Status) {
	c.wbuf = protocol.AppendError(c.wbuf, req.Opcode, s, req.Opaque)
}

// get serves GET, GETK, GAT, GATK and their quiet forms. The value is copied
// from the store straight into the output buffer behind a header whose
// length, CAS, data type and flags are filled in afterwards, so a hit
// allocates nothing.
func (c *conn) get(req *protocol.Request) {
	loud := req.Opcode.Loud()
	withKey := loud == protocol.OpGetK || loud == protocol.OpGATK
	touch := loud == protocol.OpGAT || loud == protocol.OpGATK
	keyLen := 0
	if withKey {
		keyLen = len(req.Key)
	}

	start := len(c.wbuf)
	c.wbuf = protocol.AppendHeader(c.wbuf, protocol.MagicResponse, req.Opcode, keyLen, 4, 0, 0, 0, req.Opaque, 0)
	c.wbuf = append(c.wbuf, 0, 0, 0, 0) // flags, patched below
	if withKey {
		c.wbuf = append(c.wbuf, req.Key...)
	}
	var meta store.Meta
	var hit bool
	if touch {
		c.stats[cCmdTouch].Add(1)
		exp := binary.BigEndian.Uint32(req.Extras)
		c.wbuf, meta, hit = c.srv.cfg.Store.GetAndTouch(req.Key, c.expiry(exp), c.wbuf)
		c.count(hit, cTouchHits, cTouchMisses)
	} else {
		c.stats[cCmdGet].Add(1)
		c.wbuf, meta, hit = c.srv.cfg.Store.Get(req.Key, c.wbuf)
		c.count(hit, cGetHits, cGetMisses)
	}
	if !hit {
		c.wbuf = c.wbuf[:start]
		switch {
		case req.Opcode.IsQuiet():
		case withKey:
			// memcached answers a GETK miss with the key and no message.
			c.reply(req, protocol.StatusKeyNotFound, 0, nil, req.Key, nil)
		default:
			c.fail(req, protocol.StatusKeyNotFound)
		}
		return
	}
	h := c.wbuf[start:]
	h[5] = meta.DataType
	binary.BigEndian.PutUint32(h[8:12], uint32(len(h)-protocol.HeaderLen))
	binary.BigEndian.PutUint64(h[16:24], meta.CAS)
	binary.BigEndian.PutUint32(h[24:28], meta.Flags)
}

// touch serves TOUCH: a new expiration, answered with the item's flags.
func (c *conn) touch(req *protocol.Request) {
	c.stats[cCmdTouch].Add(1)
	meta, hit := c.srv.cfg.Store.Touch(req.Key, c.expiry(binary.BigEndian.Uint32(req.Extras)))
	c.count(hit, cTouchHits, cTouchMisses)
	if !hit {
		c.fail(req, protocol.StatusKeyNotFound)
		return
	}
	var flags [4]byte
	binary.BigEndian.PutUint32(flags[:], meta.Flags)
	c.reply(req, protocol.StatusOK, meta.CAS, flags[:], nil, nil)
}

// update serves SET, ADD, REPLACE, APPEND, PREPEND and their quiet forms.
func (c *conn) update(req *protocol.Request, mode store.Mode) {
	c.stats[cCmdSet].Add(1)
	var flags, exp uint32
	if len(req.Extras) == 8 {
		flags = binary.BigEndian.Uint32(req.Extras[0:4])
		exp = binary.BigEndian.Uint32(req.Extras[4:8])
	}
	at := c.expiry(exp)
	cas, err := c.srv.cfg.Store.Set(mode, req.Key, req.Value, flags, req.DataType, at, req.CAS)
	if req.CAS != 0 {
		c.countCAS(err)
	}
	if err != nil {
		if mode == store.ModeSet && (err == store.ErrTooLarge || err == store.ErrNoMemory) {
			// As memcached does: a SET that failed must not leave the old
			// value to be read.
			c.srv.cfg.Store.Delete(req.Key, 0)
		}
		c.fail(req, statusOf(err))
		return
	}
	if mode <= store.ModeReplace { // the item is the request's value
		c.stored = store.Meta{Flags: flags, Exp: at, DataType: req.DataType, CAS: cas}
	}
	c.ok(req, cas)
}

// delete serves DELETE and DELETEQ.
func (c *conn) delete(req *protocol.Request) {
	err := c.srv.cfg.Store.Delete(req.Key, req.CAS)
	c.count(err == nil, cDeleteHits, cDeleteMisses)
	if err != nil {
		c.fail(req, statusOf(err))
		return
	}
	c.ok(req, 0)
}

// arith serves INCREMENT, DECREMENT and their quiet forms. Extras are the
// delta, the initial value and the expiration; an expiration of 0xffffffff
// means the key must already exist.
func (c *conn) arith(req *protocol.Request) {
	incr := req.Opcode.Loud() == protocol.OpIncrement
	delta := binary.BigEndian.Uint64(req.Extras[0:8])
	initial := binary.BigEndian.Uint64(req.Extras[8:16])
	exp := binary.BigEndian.Uint32(req.Extras[16:20])
	v, cas, err := c.srv.cfg.Store.Arith(req.Key, incr, delta, initial, c.expiry(exp), exp != arithNoCreate, req.CAS)
	if incr {
		c.count(err != store.ErrNotFound, cIncrHits, cIncrMisses)
	} else {
		c.count(err != store.ErrNotFound, cDecrHits, cDecrMisses)
	}
	if err != nil {
		c.fail(req, statusOf(err))
		return
	}
	if req.Opcode.IsQuiet() {
		return
	}
	var val [8]byte
	binary.BigEndian.PutUint64(val[:], v)
	c.reply(req, protocol.StatusOK, cas, nil, nil, val[:])
}

// flushLocal flushes this node's store for FLUSH or FLUSHQ, with an
// optional delay; the caller answers.
func (c *conn) flushLocal(req *protocol.Request) {
	c.stats[cCmdFlush].Add(1)
	at := c.srv.cfg.Now()
	if len(req.Extras) == 4 {
		if exp := binary.BigEndian.Uint32(req.Extras); exp != 0 {
			at = c.expiry(exp)
		}
	}
	c.srv.cfg.Store.Flush(at)
}

// saslAuth serves SASL_AUTH with the PLAIN mechanism: a value of
// "authzid\0user\0password". Without configured users any credentials are
// accepted, so clients that always authenticate work against an open node.
// With users, a connection that said HELLO as a peer must then
// authenticate as the peer user (Config.PeerAuth); it is refused, and the
// refusal logged, otherwise.
func (c *conn) saslAuth(req *protocol.Request) {
	c.stats[cAuthCmds].Add(1)
	users := c.srv.cfg.Users
	parts := bytes.SplitN(req.Value, []byte{0}, 3)
	ok := string(req.Key) == "PLAIN" && len(parts) == 3
	if ok && len(users) > 0 {
		want, known := users[string(parts[1])]
		ok = known && subtle.ConstantTimeCompare([]byte(want), parts[2]) == 1
	}
	why := refusedPassword
	if ok && len(users) > 0 {
		c.peer = c.claimsPeer && c.srv.isPeerUser(parts[1])
		ok = c.peer || !c.claimsPeer
		why = refusedNotPeerUser
	}
	if !ok {
		c.stats[cAuthErrors].Add(1)
		c.authed = len(users) == 0
		if c.claimsPeer && len(parts) == 3 {
			c.srv.refusePeer(c, string(parts[1]), why)
		}
		c.fail(req, protocol.StatusAuthError)
		return
	}
	c.authed = true
	c.reply(req, protocol.StatusOK, 0, nil, nil, []byte("Authenticated"))
}

// count adds one to the hit or the miss counter.
func (c *conn) count(hit bool, hitC, missC counter) {
	if hit {
		c.stats[hitC].Add(1)
	} else {
		c.stats[missC].Add(1)
	}
}

// countCAS records the outcome of a mutation that carried a CAS.
func (c *conn) countCAS(err error) {
	switch err {
	case nil:
		c.stats[cCasHits].Add(1)
	case store.ErrNotFound:
		c.stats[cCasMisses].Add(1)
	case store.ErrExists:
		c.stats[cCasBadval].Add(1)
	}
}
