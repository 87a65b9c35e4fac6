package server

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"
)

// warnEvery is the least time between two warnings of a kind that every
// connection or request may cause (a refused peer, a peer timing out).
const warnEvery = 10 * time.Second

// sometimes lets an event through at most once per interval, so an event
// that may repeat with every connection or request (a node retrying with
// the wrong credentials) is logged once per interval, with the number of
// those that were not. The zero value is ready; safe for concurrent use.
type sometimes struct {
	next       atomic.Int64 // Unix nanoseconds before which nothing goes through
	suppressed atomic.Uint64
}

// allow reports whether this event goes through and, if so, how many did
// not since the last that did.
func (s *sometimes) allow(interval time.Duration) (ok bool, suppressed uint64) {
	now := time.Now().UnixNano()
	next := s.next.Load()
	if now < next || !s.next.CompareAndSwap(next, now+int64(interval)) {
		s.suppressed.Add(1)
		return false, 0
	}
	return true, s.suppressed.Swap(0)
}

// ParseUsers reads SASL PLAIN credentials, one "user:password" a line. Blank
// lines and lines starting with '#' are skipped; the password is everything
// after the first colon. A malformed line is an error naming its number.
func ParseUsers(r io.Reader) (map[string]string, error) {
	users := make(map[string]string)
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, pass, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("line %d: want user:password", n)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("line %d: user %q listed twice", n, user)
		}
		users[user] = pass
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("no users")
	}
	return users, nil
}
