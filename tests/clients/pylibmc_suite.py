#!/usr/bin/python3
"""Conformance suite: pylibmc (libmemcached) in binary mode against one server.

Usage:
    /usr/bin/python3 pylibmc_suite.py HOST:PORT

libmemcached pipelines: get_multi sends one GETKQ per key and ends with NOOP;
the server must answer hits in request order, stay silent on misses and
answer the NOOP last. pylibmc raises on protocol and socket errors, so a
broken connection fails the test that saw it.

Exit status 0 only if every test passed; the last lines are unittest's summary
("Ran N tests ... OK").
"""

import argparse
import os
import sys
import time
import unittest
import uuid

import pylibmc

ADDR = None


def new_client():
    return pylibmc.Client(
        [ADDR],
        binary=True,
        behaviors={
            "cas": True,  # gets/cas need it
            "tcp_nodelay": True,
            "connect_timeout": 2000,  # ms
            "_poll_timeout": 5000,  # ms, bounds every read
        },
    )


class ClientTest(unittest.TestCase):
    """Base: a fresh client per test and unique keys."""

    def setUp(self):
        self.mc = new_client()
        self.prefix = "plm-%s-%s-" % (self._testMethodName, uuid.uuid4().hex[:8])

    def tearDown(self):
        self.mc.disconnect_all()

    def key(self, name):
        return self.prefix + str(name)


class ValueTest(ClientTest):
    def roundtrip(self, value):
        key = self.key("v")
        self.assertTrue(self.mc.set(key, value))
        got = self.mc.get(key)
        self.assertEqual(got, value)
        self.assertIs(type(got), type(value))

    def test_str(self):
        self.roundtrip("hello")

    def test_empty(self):
        self.roundtrip(b"")

    def test_unicode(self):
        self.roundtrip("grüße, 世界")

    def test_bytes(self):
        self.roundtrip(bytes(range(256)))

    def test_int(self):
        self.roundtrip(12345)

    def test_bool(self):
        # pylibmc stores a bool as an integer: it comes back as 1, an int.
        key = self.key("b")
        self.assertTrue(self.mc.set(key, True))
        self.assertEqual(self.mc.get(key), 1)

    def test_pickled(self):
        self.roundtrip({"list": [1, 2, 3], "tuple": (4, 5)})

    def test_large_value(self):
        self.roundtrip(os.urandom(500 * 1024))

    def test_too_large(self):
        with self.assertRaises(pylibmc.TooBig):
            self.mc.set(self.key("big"), os.urandom(2 * 1024 * 1024))
        self.assertTrue(self.mc.set(self.key("after"), b"ok"))
        self.assertEqual(self.mc.get(self.key("after")), b"ok")


class KeyTest(ClientTest):
    def test_get_missing(self):
        self.assertIsNone(self.mc.get(self.key("missing")))
        self.assertEqual(self.mc.get(self.key("missing"), "dflt"), "dflt")

    def test_delete(self):
        key = self.key("d")
        self.assertTrue(self.mc.set(key, b"x"))
        self.assertTrue(self.mc.delete(key))
        self.assertIsNone(self.mc.get(key))
        self.assertFalse(self.mc.delete(key))

    def test_add_replace(self):
        key = self.key("ar")
        # In binary mode libmemcached reports REPLACE's 0x01 as NotFound.
        with self.assertRaises(pylibmc.NotFound):
            self.mc.replace(key, b"r0")
        self.assertTrue(self.mc.add(key, b"a1"))
        self.assertFalse(self.mc.add(key, b"a2"))
        self.assertTrue(self.mc.replace(key, b"r1"))
        self.assertEqual(self.mc.get(key), b"r1")

    def test_append_prepend(self):
        key = self.key("ap")
        self.assertTrue(self.mc.set(key, b"middle"))
        self.assertTrue(self.mc.append(key, b">end"))
        self.assertTrue(self.mc.prepend(key, b"start<"))
        self.assertEqual(self.mc.get(key), b"start<middle>end")

    def test_append_missing(self):
        key = self.key("am")
        self.assertFalse(self.mc.append(key, b"x"))
        self.assertFalse(self.mc.prepend(key, b"x"))
        self.assertIsNone(self.mc.get(key))

    def test_touch(self):
        short, kept = self.key("short"), self.key("kept")
        self.assertTrue(self.mc.set(short, b"x", time=3600))
        self.assertTrue(self.mc.set(kept, b"y", time=1))
        self.assertTrue(self.mc.touch(short, 1))
        self.assertTrue(self.mc.touch(kept, 3600))
        self.assertFalse(self.mc.touch(self.key("missing"), 10))
        deadline = time.monotonic() + 5
        while self.mc.get(short) is not None:
            self.assertLess(time.monotonic(), deadline, "touched to 1 s, still there after 5 s")
            time.sleep(0.1)
        self.assertEqual(self.mc.get(kept), b"y")

    def test_flush_all(self):
        keys = [self.key(i) for i in range(5)]
        for k in keys:
            self.assertTrue(self.mc.set(k, b"x"))
        self.assertTrue(self.mc.flush_all())
        self.assertEqual(self.mc.get_multi(keys), {})

    def test_stats(self):
        stats = self.mc.get_stats()
        self.assertEqual(len(stats), 1)
        self.assertGreater(len(stats[0][1]), 0, "STAT returned no entries")


class CounterTest(ClientTest):
    def test_incr_decr(self):
        key = self.key("n")
        self.assertTrue(self.mc.set(key, b"10"))
        self.assertEqual(self.mc.incr(key), 11)
        self.assertEqual(self.mc.incr(key, 9), 20)
        self.assertEqual(self.mc.decr(key, 5), 15)
        self.assertEqual(self.mc.decr(key, 100), 0)
        # memcached rewrites a shorter counter in place, padding with
        # spaces ("0 "); a server that stores "0" is just as right.
        self.assertEqual(self.mc.get(key).rstrip(b" "), b"0")

    def test_incr_missing(self):
        with self.assertRaises(pylibmc.NotFound):
            self.mc.incr(self.key("missing"))

    def test_incr_non_numeric(self):
        key = self.key("s")
        self.assertTrue(self.mc.set(key, b"abc"))
        with self.assertRaises(pylibmc.Error):
            self.mc.incr(key)

    def test_incr_multi(self):
        keys = [self.key(i) for i in range(20)]
        self.mc.set_multi({k: b"1" for k in keys})
        self.mc.incr_multi(keys, delta=4)
        self.assertEqual(self.mc.get_multi(keys), {k: b"5" for k in keys})


class MultiTest(ClientTest):
    def test_get_multi_hundreds(self):
        present = {self.key("p%03d" % i): ("value-%d" % i).encode() for i in range(300)}
        self.assertEqual(self.mc.set_multi(present), [])
        missing = [self.key("m%03d" % i) for i in range(100)]
        keys = list(present) + missing
        keys.sort()  # interleaves hits and misses
        self.assertEqual(self.mc.get_multi(keys), present)

    def test_get_multi_all_missing(self):
        self.assertEqual(self.mc.get_multi([self.key(i) for i in range(50)]), {})

    def test_get_multi_key_prefix(self):
        self.assertEqual(self.mc.set_multi({"a": b"1", "b": b"2"}, key_prefix=self.prefix), [])
        got = self.mc.get_multi(["a", "b", "c"], key_prefix=self.prefix)
        self.assertEqual(got, {"a": b"1", "b": b"2"})

    def test_get_multi_mixed_types(self):
        mapping = {self.key("s"): "text", self.key("i"): 7, self.key("o"): [1, "two"]}
        self.assertEqual(self.mc.set_multi(mapping), [])
        self.assertEqual(self.mc.get_multi(list(mapping)), mapping)

    def test_delete_multi(self):
        keys = [self.key(i) for i in range(50)]
        self.assertEqual(self.mc.set_multi({k: b"x" for k in keys}), [])
        self.assertTrue(self.mc.delete_multi(keys))
        self.assertEqual(self.mc.get_multi(keys), {})

    def test_many_round_trips(self):
        # Keep one connection busy with mixed traffic; bounded in count.
        for i in range(500):
            k = self.key(i % 37)
            self.assertTrue(self.mc.set(k, str(i).encode()))
            self.assertEqual(self.mc.get(k), str(i).encode())


class CasTest(ClientTest):
    def test_gets_cas(self):
        key = self.key("c")
        self.assertTrue(self.mc.set(key, b"v1"))
        value, cas = self.mc.gets(key)
        self.assertEqual(value, b"v1")
        self.assertTrue(cas)
        self.assertTrue(self.mc.cas(key, b"v2", cas))
        self.assertFalse(self.mc.cas(key, b"v3", cas), "a stale CAS must be refused")
        self.assertEqual(self.mc.get(key), b"v2")

    def test_gets_missing(self):
        self.assertEqual(self.mc.gets(self.key("missing")), (None, None))


def main():
    global ADDR
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("addr", help="HOST:PORT of the server")
    ADDR = parser.parse_args().addr

    print("pylibmc suite: server %s, pylibmc %s, libmemcached %s, python %s"
          % (ADDR, pylibmc.__version__, pylibmc.libmemcached_version, sys.version.split()[0]),
          flush=True)
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for case in [ValueTest, KeyTest, CounterTest, MultiTest, CasTest]:
        suite.addTests(loader.loadTestsFromTestCase(case))
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)


if __name__ == "__main__":
    main()
