//go:build linux

package e2e

import (
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"
)

// Tests of the harness itself: no server involved.

func frame(magic, op uint8, key string, extras, value []byte, status uint16) []byte {
	b := make([]byte, headerLen)
	b[0], b[1] = magic, op
	binary.BigEndian.PutUint16(b[2:], uint16(len(key)))
	b[4] = uint8(len(extras))
	binary.BigEndian.PutUint16(b[6:], status)
	binary.BigEndian.PutUint32(b[8:], uint32(len(extras)+len(key)+len(value)))
	return append(append(append(b, extras...), key...), value...)
}

func TestFrameDecoder(t *testing.T) {
	stream := slices.Concat(
		frame(magicRequest, 0x0d, "key-1", nil, nil, 0),
		frame(magicRequest, 0x01, "key-2", make([]byte, 8), []byte("value"), 0),
		frame(magicRequest, 0x0a, "", nil, nil, 0),
		frame(magicRequest, 0x00, strings.Repeat("k", 200), nil, nil, 0),
	)
	want := []string{
		`GETKQ key="key-1" extras=0 body=5 opaque=0x0`,
		`SET key="key-2" extras=8 body=18 opaque=0x0`,
		`NOOP extras=0 body=0 opaque=0x0`,
		`GET key="` + strings.Repeat("k", maxKeyShown) + `"…(200 bytes) extras=0 body=200 opaque=0x0`,
	}
	for _, chunk := range []int{1, 7, 24, 25, len(stream)} {
		d := frameDecoder{magic: magicRequest}
		var got []string
		for p := stream; len(p) > 0; p = p[min(chunk, len(p)):] {
			d.feed(p[:min(chunk, len(p))], func(h header, key []byte) { got = append(got, describe(h, key)) })
		}
		if !slices.Equal(got, want) || d.broken != "" {
			t.Errorf("chunks of %d: got %q (broken %q), want %q", chunk, got, d.broken, want)
		}
	}

	t.Run("response", func(t *testing.T) {
		d := frameDecoder{magic: magicResponse}
		var got []string
		d.feed(frame(magicResponse, 0x00, "", nil, nil, 0x01), func(h header, key []byte) { got = append(got, describe(h, key)) })
		if want := []string{"GET status=0x01(not-found) extras=0 body=0 opaque=0x0"}; !slices.Equal(got, want) {
			t.Errorf("got %q, want %q", got, want)
		}
	})

	t.Run("not binary", func(t *testing.T) {
		d := frameDecoder{magic: magicRequest}
		d.feed([]byte("get foo\r\nget bar\r\nget baz\r\n"), func(header, []byte) { t.Error("emitted a frame") })
		if d.broken == "" {
			t.Error("text protocol not reported")
		}
	})
}

func TestParseMemccapable(t *testing.T) {
	passing := "binary noop                             [pass]\nbinary quit                             [pass]\nAll tests passed\n"
	r := parseMemccapable(passing)
	if len(r.passed) != 2 || r.run() != 2 || !r.allPassed {
		t.Errorf("passing output: %+v", r)
	}
	failing := "binary noop                             [pass]\nbinary getkq                            [FAIL]\nbinary stat                             [skip]\n1 of 3 tests failed\n"
	r = parseMemccapable(failing)
	if !slices.Equal(r.failed, []string{"binary getkq"}) || !slices.Equal(r.skipped, []string{"binary stat"}) || r.run() != 3 || r.allPassed {
		t.Errorf("failing output: %+v", r)
	}
}

func TestParseUnittest(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		runErr    error
		ok        bool
	}{
		{"ok", "test_a ... ok\n\n----\nRan 35 tests in 0.405s\n\nOK\n", nil, true},
		{"failed", "Ran 35 tests in 0.4s\n\nFAILED (errors=1)\n", errors.New("exit status 1"), false},
		{"failed exit 0", "Ran 35 tests in 0.4s\n\nFAILED (failures=1)\n", nil, false},
		{"skipped", "Ran 3 tests in 0.1s\n\nOK (skipped=1)\n", nil, false},
		{"none", "Ran 0 tests in 0.000s\n\nOK\n", nil, false},
		{"no summary", "Traceback (most recent call last):\nImportError\n", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := parseUnittest(tc.out, tc.runErr); (err == nil) != tc.ok {
				t.Errorf("parseUnittest = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestParseMinitest(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		ok        bool
	}{
		{"ok", "....\n\n20 runs, 386 assertions, 0 failures, 0 errors, 0 skips\n", true},
		{"failure", "20 runs, 380 assertions, 1 failures, 0 errors, 0 skips\n", false},
		{"error", "20 runs, 380 assertions, 0 failures, 2 errors, 0 skips\n", false},
		{"skip", "20 runs, 380 assertions, 0 failures, 0 errors, 1 skips\n", false},
		{"none", "0 runs, 0 assertions, 0 failures, 0 errors, 0 skips\n", false},
		{"no summary", "cannot load such file -- dalli\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := parseMinitest(tc.out, nil); (err == nil) != tc.ok {
				t.Errorf("parseMinitest = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
