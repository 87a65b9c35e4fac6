package main

import (
	"errors"
	"io"
	"time"

	"vbcache/protocol"
)

// frameReader reads response frames from a connection into one reusable
// buffer. It is owned by a single goroutine.
type frameReader struct {
	r       io.Reader
	buf     []byte
	start   int // first unparsed byte in buf
	end     int // end of the data read into buf
	maxBody uint32

	// readAt is when the read that completed the most recently returned frame
	// returned: the frame's arrival time.
	readAt time.Time
}

func newFrameReader(r io.Reader, maxBody uint32) *frameReader {
	return &frameReader{r: r, buf: make([]byte, 64<<10), maxBody: maxBody}
}

// next returns the next response frame, reading from the connection as
// needed. The frame's slices alias the reader's buffer and are valid only
// until the next call. Any error is fatal for the connection.
func (fr *frameReader) next() (protocol.Request, error) {
	for {
		resp, n, err := protocol.Parse(fr.buf[fr.start:fr.end], protocol.MagicResponse, fr.maxBody)
		if err == nil {
			fr.start += n
			return resp, nil
		}
		if !errors.Is(err, protocol.ErrIncomplete) {
			return resp, err
		}
		if err := fr.fill(); err != nil {
			return resp, err
		}
	}
}

// fill makes room at the end of the buffer, growing it if a single frame
// needs more, and reads once.
func (fr *frameReader) fill() error {
	if fr.start > 0 {
		fr.end = copy(fr.buf, fr.buf[fr.start:fr.end])
		fr.start = 0
	}
	need := len(fr.buf) // any free space will do unless one frame is bigger
	if fr.end >= protocol.HeaderLen {
		h := protocol.ParseHeader(fr.buf)
		need = max(need, protocol.HeaderLen+int(h.BodyLen))
	}
	if fr.end == len(fr.buf) || need > len(fr.buf) {
		grown := make([]byte, max(need, 2*len(fr.buf)))
		copy(grown, fr.buf[:fr.end])
		fr.buf = grown
	}
	n, err := fr.r.Read(fr.buf[fr.end:])
	fr.readAt = time.Now()
	fr.end += n
	if n > 0 {
		return nil // report err on the next read, after the data is used
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}
