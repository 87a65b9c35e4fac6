// Package e2e is the end-to-end conformance harness: it runs unmodified
// memcached clients (memccapable from libmemcached-tools,
// python-binary-memcached, pylibmc and Ruby's Dalli) against a freshly built
// node, over real loopback TCP, and requires every one of their checks to pass.
//
// The package has only tests. TestMain builds ./cmd/node once (with -race when
// the tests run with -race, and a data race the node reports fails the test).
// Every test starts its own server on a free 127.0.0.1 port and stops it with
// SIGTERM at the end; a server that exits early or not with status 0 fails the
// test, and its output is printed when a test fails.
//
// Clients reach the server through a tap, a loopback proxy that forwards bytes
// unchanged and decodes the binary-protocol frames in both directions: each
// test logs which opcodes its client sent and what the server answered, and a
// failing test also logs the last frames exchanged.
//
// Environment:
//
//	E2E_SERVER=memcached  run every test against a real memcached
//	                      (memcached -U 0 -l 127.0.0.1 -p PORT) instead of the
//	                      node, to check the harness itself; TestAuth skips.
//	E2E_DIRECT=1          connect clients straight to the server, without
//	                      the tap.
//	E2E_NODE_ARGS="..."   extra flags for every node of the cluster tests,
//	                      e.g. "-vbuckets 64 -log-level debug".
//	VBCACHE_SCREENSHOT_DIR=DIR
//	                      where the dashboard tests save their screenshots;
//	                      default vbcache-screenshots in the system's
//	                      temporary directory. They stay after the run.
//
// The dashboard tests (dashboard_test.go) load each node's dashboard in
// headless Chromium, driven by chromedp, and check what it shows against
// what the nodes report.
//
// The clients and Chromium are Debian packages; scripts/test.sh installs
// them. A missing one fails its test with the name of the package to
// install. The tests run on Linux only: the harness ties each server's life
// to the test binary's with a parent-death signal.
package e2e
