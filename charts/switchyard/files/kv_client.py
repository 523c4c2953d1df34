#!/usr/bin/env python3
"""A workload beside a Switchyard node-agent, in Python with only the
standard library: it uses the fleet through the agent's workload API
(HTTP/JSON on 127.0.0.1:9091 by default; see docs/workload-api.yaml).

    kv_client.py put KEY VALUE        store a record in the fleet's DHT
    kv_client.py get KEY              read it back (from any node)
    kv_client.py closest KEY          the peers closest to KEY
    kv_client.py peers                the peers this node reaches
    kv_client.py send PEER PROTO MSG  send MSG to PEER on protocol PROTO
    kv_client.py serve PROTO          answer requests on PROTO (echo)
    kv_client.py loadgen              put and get random records forever

Set SWITCHYARD_WORKLOAD_API (default http://127.0.0.1:9091) to reach
another agent. Copy what you need: each call is a few lines of urllib.
"""

import json
import os
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

API = os.environ.get("SWITCHYARD_WORKLOAD_API", "http://127.0.0.1:9091")


class ApiError(Exception):
    """The agent refused a call; the message says what to change."""

    def __init__(self, status, message):
        super().__init__(f"{status}: {message}")
        self.status = status


def call(method, path, body=None, timeout=30.0):
    """One API call: (status, headers, body bytes). Errors raise ApiError
    with the agent's message."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(API + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            message = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            message = raw.decode(errors="replace")
        raise ApiError(e.code, message) from None


def quote(key):
    return urllib.parse.quote(key, safe="")


def put(key, value):
    """Store VALUE under KEY on the k closest nodes; how many took it."""
    _, _, body = call("PUT", f"/v1/records/{quote(key)}", value)
    return json.loads(body)["stored"]


def get(key):
    """The value under KEY, or None."""
    try:
        return call("GET", f"/v1/records/{quote(key)}")[2]
    except ApiError as e:
        if e.status == 404:
            return None
        raise


def closest(key, count=20):
    _, _, body = call("GET", f"/v1/closest/{quote(key)}?count={count}")
    return json.loads(body)["peers"]


def peers():
    return json.loads(call("GET", "/v1/peers")[2])


def send(peer, protocol, message):
    """Send MESSAGE to PEER on PROTOCOL; its answer."""
    q = urllib.parse.urlencode({"peer": peer, "protocol": protocol})
    return call("POST", f"/v1/send?{q}", message)[2]


def serve(protocol, answer, wait=10.0, stop=lambda: False):
    """Answer the requests to this node on PROTOCOL with answer(body,
    sender) until stop() is true."""
    q = urllib.parse.urlencode({"protocol": protocol, "wait": wait})
    while not stop():
        status, headers, body = call("GET", f"/v1/inbound?{q}", timeout=wait + 10)
        if status == 204:
            continue
        reply = answer(body, headers["x-switchyard-from"])
        call("POST", f"/v1/inbound/{headers['x-switchyard-request']}", reply)


def loadgen(rate=5.0, keys=1000):
    """Put then get random records at RATE per second; print a line of
    totals every 10 s. Failures are counted, never fatal."""
    ok = failed = 0
    last = time.monotonic()
    while True:  # the agent may still be starting
        try:
            me = peers()["self"]
            break
        except (ApiError, OSError) as e:
            print(f"waiting for the agent: {e}", file=sys.stderr, flush=True)
            time.sleep(1)
    while True:
        key = f"{me}-{random.randrange(keys)}"
        value = f"{time.time()}".encode()
        try:
            put(key, value)
            if get(key) is None:
                raise ApiError(404, f"{key} not found right after its put")
            ok += 2
        except (ApiError, OSError) as e:
            failed += 1
            print(f"failed: {e}", file=sys.stderr, flush=True)
        if time.monotonic() - last >= 10:
            print(json.dumps({"ok": ok, "failed": failed}), flush=True)
            last = time.monotonic()
        time.sleep(1.0 / rate)


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    try:
        if cmd == "put" and len(args) == 2:
            print(put(args[0], args[1]))
        elif cmd == "get" and len(args) == 1:
            v = get(args[0])
            if v is None:
                print(f"no record under {args[0]!r}", file=sys.stderr)
                return 1
            sys.stdout.buffer.write(v + b"\n")
        elif cmd == "closest" and len(args) == 1:
            print(json.dumps(closest(args[0]), indent=2))
        elif cmd == "peers" and not args:
            print(json.dumps(peers(), indent=2))
        elif cmd == "send" and len(args) == 3:
            sys.stdout.buffer.write(send(*args) + b"\n")
        elif cmd == "serve" and len(args) == 1:
            serve(args[0], lambda body, sender: b"echo: " + body)
        elif cmd == "loadgen" and len(args) <= 1:
            loadgen(float(args[0]) if args else 5.0)
        else:
            print(__doc__)
            return 2
    except ApiError as e:
        print(f"the agent said {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
