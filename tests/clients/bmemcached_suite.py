#!/usr/bin/python3
"""Conformance suite: python-binary-memcached (module bmemcached) against one server.

Usage:
    /usr/bin/python3 bmemcached_suite.py HOST:PORT [--username U --password P]

With credentials every test runs over a SASL PLAIN authenticated connection and
an extra test class checks that wrong or missing credentials are refused.

bmemcached hides socket errors: a request on a connection the server closed
returns None or False as if the key were missing. To tell a miss from a broken
connection, every connection error is recorded and a test that saw one fails.

Opcodes this client sends: GET (get, gets), GETKQ...GETK (get_multi, ended by a
non-quiet GETK, not NOOP), SET/ADD/REPLACE (cas is SET with a CAS),
SETQ/ADDQ...NOOP (set_multi), DELETE (also delete_multi, as plain DELETEs then
NOOP), INCREMENT, DECREMENT, FLUSH, STAT, NOOP, SASL_LIST_MECHS, SASL_AUTH.

Exit status 0 only if every test passed; the last lines are unittest's summary
("Ran N tests ... OK").
"""

import argparse
import os
import sys
import time
import unittest
import uuid

import bmemcached
import bmemcached.protocol
from bmemcached.exceptions import MemcachedException

ADDR = None
USERNAME = None
PASSWORD = None

STATUS_NON_NUMERIC = 0x06
STATUS_TOO_LARGE = 0x03
STATUS_AUTH_ERROR = 0x20

# Every socket error bmemcached swallows, as repr strings, in order.
CONNECTION_ERRORS = []
_original_connection_error = bmemcached.protocol.Protocol._connection_error


def _record_connection_error(self, exception):
    CONNECTION_ERRORS.append(repr(exception))
    _original_connection_error(self, exception)


bmemcached.protocol.Protocol._connection_error = _record_connection_error


class Point:
    """A custom class, stored pickled."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def new_client(username=None, password=None):
    return bmemcached.Client([ADDR], username=username, password=password, socket_timeout=5)


class ClientTest(unittest.TestCase):
    """Base: a fresh client per test, unique keys, no swallowed socket errors."""

    def setUp(self):
        self.client = new_client(USERNAME, PASSWORD)
        self.prefix = "bm-%s-%s-" % (self._testMethodName, uuid.uuid4().hex[:8])
        self.errors_before = len(CONNECTION_ERRORS)

    def tearDown(self):
        self.client.disconnect_all()
        errors = CONNECTION_ERRORS[self.errors_before:]
        self.assertEqual(errors, [], "the connection broke during the test")

    def key(self, name):
        return self.prefix + str(name)


class ValueTypesTest(ClientTest):
    def roundtrip(self, value):
        key = self.key("v")
        self.assertTrue(self.client.set(key, value))
        got = self.client.get(key)
        self.assertEqual(got, value)
        self.assertIs(type(got), type(value))

    def test_string(self):
        self.roundtrip("hello world")

    def test_empty_string(self):
        self.roundtrip("")

    def test_unicode_value(self):
        self.roundtrip("grüße, 世界, 🦀")

    def test_unicode_key(self):
        key = self.key("ключ-鍵-🔑")
        self.assertTrue(self.client.set(key, "value"))
        self.assertEqual(self.client.get(key), "value")

    def test_bytes(self):
        self.roundtrip(bytes(range(256)))

    def test_int(self):
        self.roundtrip(42)
        self.roundtrip(-7)
        self.roundtrip(2**70)

    def test_booleans(self):
        self.roundtrip(True)
        self.roundtrip(False)

    def test_pickled_dict(self):
        self.roundtrip({"a": 1, "b": [1, 2, 3], "c": {"nested": ("t", None)}})

    def test_pickled_custom_class(self):
        self.roundtrip(Point(3, -4))

    def test_30kb_random_bytes(self):
        self.roundtrip(os.urandom(30 * 1024))

    def test_30kb_compressible_string(self):
        # bmemcached zlib-compresses values over 128 bytes (flag 0x08).
        self.roundtrip("abc" * 10240)

    def test_500kb_random_bytes(self):
        self.roundtrip(os.urandom(500 * 1024))

    def test_value_too_large_keeps_connection(self):
        # 2 MiB of random bytes (incompressible) is over the 1 MiB item limit:
        # the server answers 0x03 and must skip the body, not close.
        with self.assertRaises(MemcachedException) as ctx:
            self.client.set(self.key("big"), os.urandom(2 * 1024 * 1024))
        self.assertEqual(ctx.exception.code, STATUS_TOO_LARGE)
        self.assertTrue(self.client.set(self.key("after"), "still here"))
        self.assertEqual(self.client.get(self.key("after")), "still here")


class KeyOperationsTest(ClientTest):
    def test_get_missing(self):
        self.assertIsNone(self.client.get(self.key("missing")))
        self.assertEqual(self.client.get(self.key("missing"), default="dflt"), "dflt")

    def test_delete(self):
        key = self.key("d")
        self.assertTrue(self.client.set(key, "x"))
        self.assertTrue(self.client.delete(key))
        self.assertIsNone(self.client.get(key))
        # Deleting a missing key is not an error for this client.
        self.client.delete(key)

    def test_delete_with_cas(self):
        key = self.key("dc")
        self.assertTrue(self.client.set(key, "x"))
        _, cas = self.client.gets(key)
        self.assertFalse(self.client.delete(key, cas=cas + 1))
        self.assertEqual(self.client.get(key), "x")
        self.assertTrue(self.client.delete(key, cas=cas))
        self.assertIsNone(self.client.get(key))

    def test_reconnect(self):
        key = self.key("r")
        self.assertTrue(self.client.set(key, "before"))
        self.client.disconnect_all()
        self.assertEqual(self.client.get(key), "before")
        self.assertTrue(self.client.set(key, "after"))
        self.client.disconnect_all()
        self.assertEqual(self.client.get(key), "after")

    def test_add_replace(self):
        key = self.key("ar")
        self.assertFalse(self.client.replace(key, "r0"))
        self.assertIsNone(self.client.get(key))
        self.assertTrue(self.client.add(key, "a1"))
        self.assertFalse(self.client.add(key, "a2"))
        self.assertEqual(self.client.get(key), "a1")
        self.assertTrue(self.client.replace(key, "r1"))
        self.assertEqual(self.client.get(key), "r1")

    def test_expiry(self):
        key = self.key("ttl")
        self.assertTrue(self.client.set(key, "short-lived", time=1))
        self.assertTrue(self.client.set(self.key("keep"), "kept", time=3600))
        deadline = time.monotonic() + 5
        while self.client.get(key) is not None:
            self.assertLess(time.monotonic(), deadline, "a 1 s item still there after 5 s")
            time.sleep(0.1)
        self.assertEqual(self.client.get(self.key("keep")), "kept")

    def test_flush_all(self):
        keys = [self.key(i) for i in range(5)]
        for k in keys:
            self.assertTrue(self.client.set(k, "x"))
        self.assertTrue(self.client.flush_all())
        for k in keys:
            self.assertIsNone(self.client.get(k))

    def test_stats(self):
        stats = self.client.stats()
        self.assertEqual(list(stats), [ADDR])
        self.assertGreater(len(stats[ADDR]), 0, "STAT returned no entries")


class MultiTest(ClientTest):
    def test_get_multi(self):
        present = {self.key("p%03d" % i): "value-%d" % i for i in range(200)}
        for k, v in present.items():
            self.assertTrue(self.client.set(k, v))
        missing = [self.key("m%03d" % i) for i in range(50)]
        # Interleave misses; bmemcached ends the pipeline with a non-quiet GETK.
        keys = []
        for i, k in enumerate(present):
            keys.append(k)
            if i % 4 == 0 and missing:
                keys.append(missing.pop())
        keys.extend(missing)
        self.assertEqual(self.client.get_multi(keys), present)

    def test_get_multi_last_key_present(self):
        keys = [self.key(i) for i in range(10)]
        self.assertTrue(self.client.set(keys[-1], "last"))
        self.assertEqual(self.client.get_multi(keys), {keys[-1]: "last"})

    def test_get_multi_all_missing(self):
        self.assertEqual(self.client.get_multi([self.key(i) for i in range(20)]), {})

    def test_get_multi_with_cas(self):
        k = self.key("c")
        self.assertTrue(self.client.set(k, "v"))
        got = self.client.get_multi([k, self.key("missing")], get_cas=True)
        self.assertEqual(list(got), [k])
        value, cas = got[k]
        self.assertEqual(value, "v")
        self.assertNotEqual(cas, 0)

    def test_set_multi(self):
        # Not ints: bmemcached 0.31's set_multi fails to encode them (a
        # client bug, struct.error), while set() handles them.
        mapping = {self.key(i): "value-%d" % i for i in range(100)}
        mapping[self.key("bytes")] = b"\x00\x01raw"
        mapping[self.key("dict")] = {"pickled": True}
        self.assertEqual(self.client.set_multi(mapping), [])
        self.assertEqual(self.client.get_multi(list(mapping)), mapping)

    def test_set_multi_add_semantics(self):
        # A (key, 0) tuple means "add": it must fail for an existing key.
        existing, fresh = self.key("e"), self.key("f")
        self.assertTrue(self.client.set(existing, "old"))
        failed = self.client.set_multi({(existing, 0): "new", (fresh, 0): "new"})
        self.assertEqual([k for k, _ in failed], [existing])
        self.assertEqual(self.client.get(existing), "old")
        self.assertEqual(self.client.get(fresh), "new")

    def test_delete_multi(self):
        keys = [self.key(i) for i in range(30)]
        for k in keys:
            self.assertTrue(self.client.set(k, "x"))
        self.assertTrue(self.client.delete_multi(keys))
        self.assertEqual(self.client.get_multi(keys), {})


class CounterTest(ClientTest):
    def test_incr_decr(self):
        key = self.key("n")
        # A missing counter is created with the default (0) and returned as is.
        self.assertEqual(self.client.incr(key, 1), 0)
        self.assertEqual(self.client.incr(key, 5), 5)
        self.assertEqual(self.client.decr(key, 2), 3)
        self.assertEqual(self.client.decr(key, 10), 0, "decr must stop at 0")
        self.assertEqual(self.client.get(key), "0")

    def test_incr_keeps_flags(self):
        key = self.key("i")
        self.assertTrue(self.client.set(key, 10))
        self.assertEqual(self.client.incr(key, 5), 15)
        self.assertEqual(self.client.get(key), 15, "incr must keep the item's flags")

    def test_incr_wraps_at_2_64(self):
        key = self.key("w")
        self.assertTrue(self.client.set(key, str(2**64 - 1)))
        self.assertEqual(self.client.incr(key, 1), 0)

    def test_incr_non_numeric(self):
        key = self.key("s")
        self.assertTrue(self.client.set(key, "not a number"))
        with self.assertRaises(MemcachedException) as ctx:
            self.client.incr(key, 1)
        self.assertEqual(ctx.exception.code, STATUS_NON_NUMERIC)
        self.assertEqual(self.client.get(key), "not a number")


class CasTest(ClientTest):
    def test_gets_cas(self):
        key = self.key("c")
        self.assertTrue(self.client.set(key, "v1"))
        value, cas = self.client.gets(key)
        self.assertEqual(value, "v1")
        self.assertNotEqual(cas, 0)
        self.assertTrue(self.client.cas(key, "v2", cas))
        self.assertFalse(self.client.cas(key, "v3", cas), "a stale CAS must be refused")
        self.assertEqual(self.client.get(key), "v2")
        value, cas2 = self.client.get(key, get_cas=True)
        self.assertEqual(value, "v2")
        self.assertNotEqual(cas2, cas, "a write must change the CAS")

    def test_cas_missing_key(self):
        self.assertFalse(self.client.cas(self.key("none"), "v", 12345))
        self.assertEqual(self.client.gets(self.key("none")), (None, None))

    def test_cas_none_means_add(self):
        key = self.key("a")
        self.assertTrue(self.client.cas(key, "v", None))
        self.assertFalse(self.client.cas(key, "v", None))


class AuthTest(unittest.TestCase):
    """Only with --username/--password: refused credentials."""

    def test_wrong_password_refused(self):
        client = new_client(USERNAME, PASSWORD + "-wrong")
        try:
            # bmemcached expects 0x08 for bad credentials and raises
            # InvalidCredentials; memcached answers 0x20, which it reports as a
            # plain MemcachedException. Both are a refusal.
            with self.assertRaises(MemcachedException) as ctx:
                client.set(auth_key("wrong"), "x")
            self.assertIn(ctx.exception.code, (0x08, STATUS_AUTH_ERROR))
        finally:
            client.disconnect_all()

    def test_unknown_user_refused(self):
        client = new_client("nobody-" + uuid.uuid4().hex[:6], "pw")
        try:
            with self.assertRaises(MemcachedException):
                client.get(auth_key("unknown"))
        finally:
            client.disconnect_all()

    def test_no_credentials_refused(self):
        client = new_client()
        try:
            with self.assertRaises(MemcachedException) as ctx:
                client.get(auth_key("anon"))
            self.assertEqual(ctx.exception.code, STATUS_AUTH_ERROR)
        finally:
            client.disconnect_all()


def auth_key(name):
    return "bm-auth-%s-%s" % (name, uuid.uuid4().hex[:8])


def main():
    global ADDR, USERNAME, PASSWORD
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("addr", help="HOST:PORT of the server")
    parser.add_argument("--username")
    parser.add_argument("--password")
    args = parser.parse_args()
    ADDR, USERNAME, PASSWORD = args.addr, args.username, args.password

    print("bmemcached suite: server %s, auth %s, python %s"
          % (ADDR, "as " + USERNAME if USERNAME else "off", sys.version.split()[0]), flush=True)
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    cases = [ValueTypesTest, KeyOperationsTest, MultiTest, CounterTest, CasTest]
    if USERNAME:
        cases.append(AuthTest)
    for case in cases:
        suite.addTests(loader.loadTestsFromTestCase(case))
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)


if __name__ == "__main__":
    main()
