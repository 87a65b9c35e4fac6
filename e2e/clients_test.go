//go:build linux

package e2e

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"
)

// memccapableBinaryTests is how many tests `memccapable -b` runs
// (libmemcached-tools 1.1.4): noop, quit, quitq, set, setq, flush, flushq,
// add, addq, replace, replaceq, delete, deleteq, get, getq, getk, getkq,
// incr, incrq, decr, decrq, version, append, appendq, prepend, prependq, stat.
const memccapableBinaryTests = 27

// TestMemccapable runs libmemcached's protocol conformance checker in binary
// mode; every one of its binary tests must pass.
func TestMemccapable(t *testing.T) {
	requireTool(t, "memccapable", "libmemcached-tools")
	checkMemccapable(t, connectAddr(t, startServer(t)))
}

// checkMemccapable runs memccapable -b against addr and requires every
// binary test to pass.
func checkMemccapable(t *testing.T, addr string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	// -t: seconds an I/O operation may take; memccapable FLUSHes the server.
	out, err := runClient(t, "memccapable", "-b", "-t", "10", "-h", host, "-p", port)
	if err != nil {
		t.Errorf("memccapable: %v", err)
	}
	res := parseMemccapable(out)
	if len(res.failed) > 0 {
		t.Errorf("memccapable failed %d binary tests: %s", len(res.failed), strings.Join(res.failed, ", "))
	}
	if len(res.skipped) > 0 {
		t.Errorf("memccapable skipped binary tests: %s", strings.Join(res.skipped, ", "))
	}
	if res.run() != memccapableBinaryTests || len(res.passed) != res.run() {
		t.Errorf("memccapable passed %d of %d binary tests, want %d of %d",
			len(res.passed), res.run(), memccapableBinaryTests, memccapableBinaryTests)
	}
	if !res.allPassed {
		t.Errorf("memccapable did not report %q", "All tests passed")
	}
}

// memccapableResult is what memccapable reported: test names by outcome.
type memccapableResult struct {
	passed, failed, skipped []string
	allPassed               bool // it printed "All tests passed"
}

func (r memccapableResult) run() int { return len(r.passed) + len(r.failed) + len(r.skipped) }

// memccapableLine matches one test's line, e.g. "binary getkq     [pass]".
var memccapableLine = regexp.MustCompile(`(?m)^((?:binary|ascii) \S+)\s+\[(pass|FAIL|skip)\]\s*$`)

func parseMemccapable(out string) memccapableResult {
	var r memccapableResult
	for _, m := range memccapableLine.FindAllStringSubmatch(out, -1) {
		switch m[2] {
		case "pass":
			r.passed = append(r.passed, m[1])
		case "FAIL":
			r.failed = append(r.failed, m[1])
		case "skip":
			r.skipped = append(r.skipped, m[1])
		}
	}
	r.allPassed = regexp.MustCompile(`(?m)^All tests passed\s*$`).MatchString(out)
	return r
}

// TestPythonBinaryMemcached runs tests/clients/bmemcached_suite.py:
// python-binary-memcached's whole API, from value types to cas.
func TestPythonBinaryMemcached(t *testing.T) {
	requirePythonModule(t, "bmemcached", "python3-binary-memcached")
	addr := connectAddr(t, startServer(t))
	out, err := runClient(t, python, "tests/clients/bmemcached_suite.py", addr)
	checkUnittest(t, "bmemcached suite", out, err)
}

// TestPylibmc runs tests/clients/pylibmc_suite.py: libmemcached in binary
// mode through pylibmc, including pipelined multi-gets of hundreds of keys.
func TestPylibmc(t *testing.T) {
	requirePythonModule(t, "pylibmc", "python3-pylibmc")
	addr := connectAddr(t, startServer(t))
	out, err := runClient(t, python, "tests/clients/pylibmc_suite.py", addr)
	checkUnittest(t, "pylibmc suite", out, err)
}

// TestDalli runs tests/clients/dalli_suite.rb: Ruby's Dalli over the binary
// protocol.
func TestDalli(t *testing.T) {
	requireTool(t, "ruby", "ruby")
	if out, err := runClient(t, "ruby", "-e", `require "dalli"`); err != nil {
		t.Fatalf("ruby cannot load dalli: apt-get install ruby-dalli: %v\n%s", err, out)
	}
	addr := connectAddr(t, startServer(t))
	out, err := runClient(t, "ruby", "tests/clients/dalli_suite.rb", addr)
	checkMinitest(t, "dalli suite", out, err)
}

// unittestRan and unittestOK match the summary of Python's unittest.
var (
	unittestRan = regexp.MustCompile(`(?m)^Ran (\d+) tests? in `)
	unittestOK  = regexp.MustCompile(`(?m)^OK$`)
)

// checkUnittest requires a unittest run that exited 0 and reported running
// at least one test, all OK (none skipped).
func checkUnittest(t *testing.T, what, out string, err error) {
	t.Helper()
	if err := parseUnittest(out, err); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

func parseUnittest(out string, runErr error) error {
	if runErr != nil {
		return runErr
	}
	m := unittestRan.FindAllStringSubmatch(out, -1)
	if len(m) != 1 {
		return fmt.Errorf("no single %q line in the output", "Ran N tests")
	}
	if atoi(m[0][1]) == 0 {
		return fmt.Errorf("ran no test")
	}
	if !unittestOK.MatchString(out) {
		return fmt.Errorf("ran %s tests, not all OK", m[0][1])
	}
	return nil
}

// minitestSummary matches minitest's last line.
var minitestSummary = regexp.MustCompile(`(?m)^(\d+) runs, (\d+) assertions, (\d+) failures, (\d+) errors, (\d+) skips$`)

// checkMinitest requires a minitest run that exited 0 and reported at least
// one run, with no failure, error or skip.
func checkMinitest(t *testing.T, what, out string, err error) {
	t.Helper()
	if err := parseMinitest(out, err); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

func parseMinitest(out string, runErr error) error {
	if runErr != nil {
		return runErr
	}
	m := minitestSummary.FindAllStringSubmatch(out, -1)
	if len(m) != 1 {
		return fmt.Errorf("no single minitest summary line in the output")
	}
	runs, failures, errs, skips := atoi(m[0][1]), atoi(m[0][3]), atoi(m[0][4]), atoi(m[0][5])
	switch {
	case runs == 0:
		return fmt.Errorf("ran no test")
	case failures+errs+skips > 0:
		return fmt.Errorf("%d runs: %d failures, %d errors, %d skips", runs, failures, errs, skips)
	}
	return nil
}
