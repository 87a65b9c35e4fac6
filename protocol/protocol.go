// Package protocol encodes and decodes memcached binary protocol frames.
//
// A frame is a 24-byte header followed by a body of extras, key and value, all
// integers big-endian (see ../shared/PROTOCOL.md). The package is a leaf: it
// uses only the standard library, allocates nothing on its decode and encode
// paths and keeps no state, so it is safe for concurrent use.
//
// Buffer ownership: Parse returns a Request whose slices alias the caller's
// buffer; they are valid until the caller reuses that buffer. The Append
// functions append to dst and return the extended slice, as append does.
package protocol

import (
	"encoding/binary"
	"errors"
)

// HeaderLen is the length of every request and response header.
const HeaderLen = 24

// Frame magics.
const (
	MagicRequest  = 0x80
	MagicResponse = 0x81
)

// MaxKeyLen is the longest key memcached accepts.
const MaxKeyLen = 250

// Data types carried in header byte 5.
const (
	DataTypeRaw  = 0x00
	DataTypeJSON = 0x01
)

// Opcode is a binary protocol command.
type Opcode uint8

// Opcodes, as numbered by the memcached and Couchbase specifications.
const (
	OpGet              Opcode = 0x00
	OpSet              Opcode = 0x01
	OpAdd              Opcode = 0x02
	OpReplace          Opcode = 0x03
	OpDelete           Opcode = 0x04
	OpIncrement        Opcode = 0x05
	OpDecrement        Opcode = 0x06
	OpQuit             Opcode = 0x07
	OpFlush            Opcode = 0x08
	OpGetQ             Opcode = 0x09
	OpNoop             Opcode = 0x0a
	OpVersion          Opcode = 0x0b
	OpGetK             Opcode = 0x0c
	OpGetKQ            Opcode = 0x0d
	OpAppend           Opcode = 0x0e
	OpPrepend          Opcode = 0x0f
	OpStat             Opcode = 0x10
	OpSetQ             Opcode = 0x11
	OpAddQ             Opcode = 0x12
	OpReplaceQ         Opcode = 0x13
	OpDeleteQ          Opcode = 0x14
	OpIncrementQ       Opcode = 0x15
	OpDecrementQ       Opcode = 0x16
	OpQuitQ            Opcode = 0x17
	OpFlushQ           Opcode = 0x18
	OpAppendQ          Opcode = 0x19
	OpPrependQ         Opcode = 0x1a
	OpVerbosity        Opcode = 0x1b
	OpTouch            Opcode = 0x1c
	OpGAT              Opcode = 0x1d
	OpGATQ             Opcode = 0x1e
	OpHello            Opcode = 0x1f
	OpSASLListMechs    Opcode = 0x20
	OpSASLAuth         Opcode = 0x21
	OpSASLStep         Opcode = 0x22
	OpGATK             Opcode = 0x23
	OpGATKQ            Opcode = 0x24
	OpSetVBucket       Opcode = 0x3d
	OpGetVBucket       Opcode = 0x3e
	OpDelVBucket       Opcode = 0x3f
	OpSelectBucket     Opcode = 0x89
	OpSetWithMeta      Opcode = 0xa2
	OpSetQWithMeta     Opcode = 0xa3
	OpDelWithMeta      Opcode = 0xa8
	OpDelQWithMeta     Opcode = 0xa9
	OpGetClusterConfig Opcode = 0xb5
	OpGetErrorMap      Opcode = 0xfe
)

var opNames = [256]string{
	OpGet: "GET", OpSet: "SET", OpAdd: "ADD", OpReplace: "REPLACE", OpDelete: "DELETE",
	OpIncrement: "INCREMENT", OpDecrement: "DECREMENT", OpQuit: "QUIT", OpFlush: "FLUSH",
	OpGetQ: "GETQ", OpNoop: "NOOP", OpVersion: "VERSION", OpGetK: "GETK", OpGetKQ: "GETKQ",
	OpAppend: "APPEND", OpPrepend: "PREPEND", OpStat: "STAT", OpSetQ: "SETQ", OpAddQ: "ADDQ",
	OpReplaceQ: "REPLACEQ", OpDeleteQ: "DELETEQ", OpIncrementQ: "INCREMENTQ",
	OpDecrementQ: "DECREMENTQ", OpQuitQ: "QUITQ", OpFlushQ: "FLUSHQ", OpAppendQ: "APPENDQ",
	OpPrependQ: "PREPENDQ", OpVerbosity: "VERBOSITY", OpTouch: "TOUCH", OpGAT: "GAT",
	OpGATQ: "GATQ", OpHello: "HELLO", OpSASLListMechs: "SASL_LIST_MECHS",
	OpSASLAuth: "SASL_AUTH", OpSASLStep: "SASL_STEP", OpGATK: "GATK", OpGATKQ: "GATKQ",
	OpSetVBucket: "SET_VBUCKET", OpGetVBucket: "GET_VBUCKET", OpDelVBucket: "DEL_VBUCKET",
	OpSelectBucket: "SELECT_BUCKET", OpSetWithMeta: "SET_WITH_META", OpDelWithMeta: "DEL_WITH_META",
	OpSetQWithMeta: "SETQ_WITH_META", OpDelQWithMeta: "DELQ_WITH_META",
	OpGetClusterConfig: "GET_CLUSTER_CONFIG",
	OpGetErrorMap:      "GET_ERROR_MAP",
}

// String returns the opcode's name, or "UNKNOWN" for opcodes this package
// does not know.
func (o Opcode) String() string {
	if s := opNames[o]; s != "" {
		return s
	}
	return "UNKNOWN"
}

// Known reports whether o is an opcode this package names.
func (o Opcode) Known() bool { return opNames[o] != "" }

// loudOf maps each quiet opcode to its loud form; zero entries are not quiet.
var loudOf = [256]Opcode{
	OpGetQ: OpGet, OpGetKQ: OpGetK, OpSetQ: OpSet, OpAddQ: OpAdd, OpReplaceQ: OpReplace,
	OpDeleteQ: OpDelete, OpIncrementQ: OpIncrement, OpDecrementQ: OpDecrement,
	OpQuitQ: OpQuit, OpFlushQ: OpFlush, OpAppendQ: OpAppend, OpPrependQ: OpPrepend,
	OpGATQ: OpGAT, OpGATKQ: OpGATK, OpSetQWithMeta: OpSetWithMeta, OpDelQWithMeta: OpDelWithMeta,
}

// IsQuiet reports whether o is the quiet form of a command: one that sends no
// response on success (and, for the GETQ family, none on a miss either).
func (o Opcode) IsQuiet() bool { return loudOf[o] != 0 || o == OpGetQ }

// Loud returns the non-quiet form of o, or o itself if o is not quiet.
func (o Opcode) Loud() Opcode {
	if o == OpGetQ {
		return OpGet // OpGet is 0, so it cannot be told from "absent" in loudOf.
	}
	if l := loudOf[o]; l != 0 {
		return l
	}
	return o
}

// Status is a response status code.
type Status uint16

// Response statuses.
const (
	StatusOK             Status = 0x00
	StatusKeyNotFound    Status = 0x01
	StatusKeyExists      Status = 0x02
	StatusValueTooLarge  Status = 0x03
	StatusInvalidArgs    Status = 0x04
	StatusNotStored      Status = 0x05
	StatusNonNumeric     Status = 0x06
	StatusNotMyVBucket   Status = 0x07
	StatusNoBucket       Status = 0x08
	StatusAuthError      Status = 0x20
	StatusAuthContinue   Status = 0x21
	StatusUnknownCommand Status = 0x81
	StatusOutOfMemory    Status = 0x82
	StatusNotSupported   Status = 0x83
	StatusInternalError  Status = 0x84
	StatusBusy           Status = 0x85
	StatusTempFailure    Status = 0x86
)

// Message returns the human-readable text memcached puts in the body of an
// error response.
func (s Status) Message() string {
	switch s {
	case StatusOK:
		return ""
	case StatusKeyNotFound:
		return "Not found"
	case StatusKeyExists:
		return "Data exists for key."
	case StatusValueTooLarge:
		return "Too large."
	case StatusInvalidArgs:
		return "Invalid arguments"
	case StatusNotStored:
		return "Not stored."
	case StatusNonNumeric:
		return "Non-numeric server-side value for incr or decr"
	case StatusNotMyVBucket:
		return "Not my vbucket"
	case StatusNoBucket:
		return "No bucket"
	case StatusAuthError:
		return "Auth failure."
	case StatusAuthContinue:
		return "Auth continue"
	case StatusUnknownCommand:
		return "Unknown command"
	case StatusOutOfMemory:
		return "Out of memory"
	case StatusNotSupported:
		return "Not supported"
	case StatusInternalError:
		return "Internal error"
	case StatusBusy:
		return "Busy"
	case StatusTempFailure:
		return "Temporary failure"
	}
	return "Unknown error"
}

// Header is a decoded frame header. In a response, VBucket holds the status.
type Header struct {
	Magic     uint8
	Opcode    Opcode
	KeyLen    uint16
	ExtrasLen uint8
	DataType  uint8
	VBucket   uint16
	BodyLen   uint32
	Opaque    uint32
	CAS       uint64
}

// Status returns the status of a response header.
func (h *Header) Status() Status { return Status(h.VBucket) }

// Request is a decoded frame. Extras, Key and Value alias the buffer it was
// parsed from.
type Request struct {
	Header
	Extras []byte
	Key    []byte
	Value  []byte
}

// Errors returned by Parse.
var (
	// ErrIncomplete means the buffer does not yet hold a whole frame.
	ErrIncomplete = errors.New("protocol: incomplete frame")
	// ErrBadMagic means the first byte is not a binary protocol magic; the
	// stream cannot be resynchronised and the connection should close.
	ErrBadMagic = errors.New("protocol: bad magic")
	// ErrTooLarge means the header declares a body longer than the caller
	// allows. The header was decoded; the body was not read.
	ErrTooLarge = errors.New("protocol: frame body too large")
	// ErrBadLengths means extras and key lengths exceed the body length.
	// The header was decoded and the whole frame is in the buffer.
	ErrBadLengths = errors.New("protocol: extras and key longer than body")
)

// ParseHeader decodes the 24-byte header at the start of b, which must hold
// at least HeaderLen bytes. It does not check the magic.
func ParseHeader(b []byte) Header {
	_ = b[HeaderLen-1]
	return Header{
		Magic:     b[0],
		Opcode:    Opcode(b[1]),
		KeyLen:    binary.BigEndian.Uint16(b[2:4]),
		ExtrasLen: b[4],
		DataType:  b[5],
		VBucket:   binary.BigEndian.Uint16(b[6:8]),
		BodyLen:   binary.BigEndian.Uint32(b[8:12]),
		Opaque:    binary.BigEndian.Uint32(b[12:16]),
		CAS:       binary.BigEndian.Uint64(b[16:24]),
	}
}

// Parse decodes one frame of the given magic from the start of buf. It
// returns the frame and its length in buf. A body longer than maxBody is
// refused with ErrTooLarge before it is buffered; on ErrTooLarge and
// ErrBadLengths the returned Request carries the decoded header so the caller
// can answer with the request's opcode and opaque. Parse does not allocate.
func Parse(buf []byte, magic uint8, maxBody uint32) (req Request, n int, err error) {
	if len(buf) == 0 {
		return req, 0, ErrIncomplete
	}
	if buf[0] != magic {
		return req, 0, ErrBadMagic
	}
	if len(buf) < HeaderLen {
		return req, 0, ErrIncomplete
	}
	req.Header = ParseHeader(buf)
	if req.BodyLen > maxBody {
		return req, 0, ErrTooLarge
	}
	total := HeaderLen + int(req.BodyLen)
	if len(buf) < total {
		return req, 0, ErrIncomplete
	}
	ext, key := int(req.ExtrasLen), int(req.KeyLen)
	if ext+key > int(req.BodyLen) {
		return req, total, ErrBadLengths
	}
	body := buf[HeaderLen:total:total]
	req.Extras = body[:ext:ext]
	req.Key = body[ext : ext+key : ext+key]
	req.Value = body[ext+key:]
	return req, total, nil
}

// Frame describes a frame to encode. Status is written in the vbucket field
// of responses; VBucket in that of requests.
type Frame struct {
	Magic    uint8
	Opcode   Opcode
	DataType uint8
	VBucket  uint16 // request vbucket or response status
	Opaque   uint32
	CAS      uint64
	Extras   []byte
	Key      []byte
	Value    []byte
}

// AppendHeader appends a header for a frame with the given body parts
// lengths; the caller appends extras, key and value itself. It is the
// building block for writing values straight from the store into an output
// buffer.
func AppendHeader(dst []byte, magic uint8, op Opcode, keyLen, extrasLen int, dataType uint8, vbOrStatus uint16, bodyLen int, opaque uint32, cas uint64) []byte {
	var h [HeaderLen]byte
	h[0] = magic
	h[1] = byte(op)
	binary.BigEndian.PutUint16(h[2:4], uint16(keyLen))
	h[4] = byte(extrasLen)
	h[5] = dataType
	binary.BigEndian.PutUint16(h[6:8], vbOrStatus)
	binary.BigEndian.PutUint32(h[8:12], uint32(bodyLen))
	binary.BigEndian.PutUint32(h[12:16], opaque)
	binary.BigEndian.PutUint64(h[16:24], cas)
	return append(dst, h[:]...)
}

// AppendFrame appends f, header and body, to dst.
func AppendFrame(dst []byte, f *Frame) []byte {
	body := len(f.Extras) + len(f.Key) + len(f.Value)
	dst = AppendHeader(dst, f.Magic, f.Opcode, len(f.Key), len(f.Extras), f.DataType, f.VBucket, body, f.Opaque, f.CAS)
	dst = append(dst, f.Extras...)
	dst = append(dst, f.Key...)
	return append(dst, f.Value...)
}

// AppendError appends a response to op with status s and memcached's error
// text for s as its body.
func AppendError(dst []byte, op Opcode, s Status, opaque uint32) []byte {
	msg := s.Message()
	dst = AppendHeader(dst, MagicResponse, op, 0, 0, DataTypeRaw, uint16(s), len(msg), opaque, 0)
	return append(dst, msg...)
}
