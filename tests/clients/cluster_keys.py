#!/usr/bin/python3
"""Cluster check: a legacy client writes keys through one node and reads them back through others.

Usage:
    /usr/bin/python3 cluster_keys.py {pylibmc|bmemcached} PREFIX COUNT set HOST:PORT
    /usr/bin/python3 cluster_keys.py {pylibmc|bmemcached} PREFIX COUNT get HOST:PORT

Legacy clients know nothing of vbuckets: they send vbucket 0 to the one server
they were given, so a cluster node must hash each key and forward the request
to the key's owner. Keys are PREFIX0 .. PREFIX<COUNT-1>; the value of a key is
derived from the key, so a `get` run in another process knows what to expect.

set: the first half one SET per key, the second half through set_multi
     (pylibmc: one SET per key inside libmemcached; bmemcached: SETQ... NOOP).
get: every key through get_multi in batches of 100 (GETKQ... NOOP for pylibmc,
     GETKQ... GETK for bmemcached: pipelines whose keys have many owners), and
     every 7th key again through a single GET.

Exit status 0 only if every operation succeeded and every value read back is
the one written; the last line is "ok: ..." or "FAILED: ...".
"""

import argparse
import sys
import time

BATCH = 100


def value_for(key):
    """The value stored under key: a few bytes to ~12 KiB, every 97th one larger
    than a typical socket read."""
    n = int(key.rsplit("-", 1)[1]) if "-" in key else 0
    unit = (key + ":").encode()
    size = 20_000 if n % 97 == 0 else 1 + n % 300
    return (unit * (size // len(unit) + 1))[:size]


class Pylibmc:
    def __init__(self, addr):
        import pylibmc

        self.mc = pylibmc.Client(
            [addr],
            binary=True,
            behaviors={"tcp_nodelay": True, "connect_timeout": 2000, "_poll_timeout": 5000},
        )
        self.errors = []

    def set(self, key, value):
        return self.mc.set(key, value)

    def set_multi(self, mapping):
        return list(self.mc.set_multi(mapping))  # the keys not stored

    def get(self, key):
        return self.mc.get(key)

    def get_multi(self, keys):
        return self.mc.get_multi(keys)

    def close(self):
        self.mc.disconnect_all()


class Bmemcached:
    def __init__(self, addr):
        import bmemcached
        import bmemcached.protocol

        # bmemcached swallows socket errors (a broken connection reads as a
        # miss): record them so they fail the run.
        self.errors = []
        original = bmemcached.protocol.Protocol._connection_error
        errors = self.errors

        def record(proto, exception):
            errors.append(repr(exception))
            original(proto, exception)

        bmemcached.protocol.Protocol._connection_error = record
        self.mc = bmemcached.Client([addr], socket_timeout=5)

    def set(self, key, value):
        return self.mc.set(key, value, time=0)

    def set_multi(self, mapping):
        return list(self.mc.set_multi(mapping, time=0))  # the keys not stored

    def get(self, key):
        return self.mc.get(key)

    def get_multi(self, keys):
        return self.mc.get_multi(keys)

    def close(self):
        self.mc.disconnect_all()


CLIENTS = {"pylibmc": Pylibmc, "bmemcached": Bmemcached}


def do_set(client, keys):
    problems = []
    half = len(keys) // 2
    for k in keys[:half]:
        if not client.set(k, value_for(k)):
            problems.append("set %s returned false" % k)
    for i in range(half, len(keys), BATCH):
        batch = keys[i:i + BATCH]
        failed = client.set_multi({k: value_for(k) for k in batch})
        problems.extend("set_multi did not store %s" % k for k in failed)
    return problems


def do_get(client, keys):
    problems = []
    for i in range(0, len(keys), BATCH):
        batch = keys[i:i + BATCH]
        got = client.get_multi(batch)
        for k in batch:
            if k not in got:
                problems.append("get_multi: %s missing" % k)
            elif got[k] != value_for(k):
                problems.append("get_multi: %s = %r..., want %r..." % (k, got[k][:40], value_for(k)[:40]))
        extra = set(got) - set(batch)
        problems.extend("get_multi: unasked key %r returned" % k for k in sorted(extra))
    for k in keys[::7]:
        v = client.get(k)
        if v != value_for(k):
            problems.append("get %s = %r, want %r..." % (k, v if v is None else v[:40], value_for(k)[:40]))
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("client", choices=sorted(CLIENTS))
    parser.add_argument("prefix")
    parser.add_argument("count", type=int)
    parser.add_argument("action", choices=["set", "get"])
    parser.add_argument("addr", help="HOST:PORT of the one node the client is given")
    args = parser.parse_args()

    keys = ["%s%d" % (args.prefix, i) for i in range(args.count)]
    client = CLIENTS[args.client](args.addr)
    start = time.monotonic()
    try:
        problems = (do_set if args.action == "set" else do_get)(client, keys)
    except Exception as e:  # a client exception is a failure, reported like the others
        problems = ["%s raised %r" % (args.action, e)]
    finally:
        client.close()
    problems += ["connection error: %s" % e for e in client.errors]
    took = time.monotonic() - start
    what = "%s %s %d keys through %s in %.2fs" % (args.client, args.action, len(keys), args.addr, took)
    if problems:
        for p in problems[:20]:
            print(p)
        if len(problems) > 20:
            print("... and %d more problems" % (len(problems) - 20))
        print("FAILED: %s: %d problems" % (what, len(problems)))
        sys.exit(1)
    print("ok: " + what)


if __name__ == "__main__":
    main()
