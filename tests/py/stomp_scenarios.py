#!/usr/bin/env python3
"""Client scenarios of issue 10, run with stomp.py over WebSocket (and a raw
websocket-client where stomp.py cannot say what is needed, e.g. STOMP 1.0).

Each scenario returns what a client observes, as plain JSON values, so that
the same run can be

* checked against what RabbitMQ's Web-STOMP does (``--check``, used by
  tests/stomppy.rs against a stompgate), and
* compared side by side between Web-STOMP and stompgate
  (scripts/compare-webstomp.sh, ``--json``).

Usage: stomp_scenarios.py --url ws://127.0.0.1:15674/ws [--check | --json]
       [--login guest --passcode guest] [--only NAME ...]
"""

import argparse
import json
import sys
import threading
import time
import traceback
import urllib.parse
import uuid

import stomp
import websocket

TIMEOUT = 20.0
RUN = uuid.uuid4().hex[:8]


def unique(prefix):
    return f"{prefix}-{RUN}-{uuid.uuid4().hex[:6]}"


class Recorder(stomp.ConnectionListener):
    """Everything a stomp.py connection saw, with waiting helpers."""

    def __init__(self):
        self.cond = threading.Condition()
        self.connected = None
        self.errors = []
        self.messages = []
        self.receipts = []
        self.heartbeats = 0
        self.disconnected = False

    def _add(self, fn):
        with self.cond:
            fn()
            self.cond.notify_all()

    def on_connected(self, frame):
        self._add(lambda: setattr(self, "connected", frame))

    def on_error(self, frame):
        self._add(lambda: self.errors.append(frame))

    def on_message(self, frame):
        self._add(lambda: self.messages.append(frame))

    def on_receipt(self, frame):
        self._add(lambda: self.receipts.append(frame.headers.get("receipt-id")))

    def on_heartbeat(self):
        self._add(lambda: setattr(self, "heartbeats", self.heartbeats + 1))

    def on_disconnected(self):
        self._add(lambda: setattr(self, "disconnected", True))

    def wait(self, predicate, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True


class Target:
    def __init__(self, url, login, passcode):
        self.url = url
        parsed = urllib.parse.urlparse(url)
        self.host = parsed.hostname
        self.port = parsed.port
        self.path = parsed.path or "/"
        self.login = login
        self.passcode = passcode

    def connect(self, heartbeats=(0, 0), login=None, passcode=None, wait=True):
        conn = stomp.WSStompConnection(
            [(self.host, self.port)],
            ws_path=self.path,
            heartbeats=heartbeats,
            reconnect_attempts_max=1,
            vhost="/",
        )
        rec = Recorder()
        conn.set_listener("rec", rec)
        conn.connect(
            login if login is not None else self.login,
            passcode if passcode is not None else self.passcode,
            wait=False,
        )
        if wait:
            ok = rec.wait(lambda: rec.connected is not None or rec.errors or rec.disconnected)
            if not ok or rec.connected is None:
                raise RuntimeError(f"not connected: {error_texts(rec)}")
        return conn, rec

    def raw(self):
        return RawClient(self.url)


class RawClient:
    """STOMP frames over websocket-client, for what stomp.py hides."""

    def __init__(self, url):
        self.ws = websocket.create_connection(url, timeout=TIMEOUT, subprotocols=["v12.stomp", "v11.stomp", "v10.stomp"])
        self.buffer = b""

    def send(self, data):
        self.ws.send(data if isinstance(data, str) else data.decode())

    def frame(self, timeout=TIMEOUT):
        """The next frame as (command, headers, body); None on close/timeout."""
        deadline = time.monotonic() + timeout
        while True:
            while self.buffer.startswith(b"\n") or self.buffer.startswith(b"\r\n"):
                self.buffer = self.buffer.lstrip(b"\r\n")
            if b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                head, _, body = raw.partition(b"\n\n")
                lines = head.decode().split("\n")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers.setdefault(name, value)
                return lines[0], headers, body
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.ws.settimeout(left)
            try:
                data = self.ws.recv()
            except Exception:
                return None
            if not data:
                return None
            self.buffer += data if isinstance(data, bytes) else data.encode()

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


def error_texts(rec):
    return [[e.headers.get("message"), e.body] for e in rec.errors]


def first_error(rec):
    rec.wait(lambda: rec.errors or rec.disconnected, timeout=5)
    if rec.errors:
        e = rec.errors[0]
        body = e.body if isinstance(e.body, str) else e.body.decode(errors="replace")
        return [e.headers.get("message"), body]
    return None


def close(conn):
    try:
        if conn.is_connected():
            conn.disconnect()
    except Exception:
        pass


# ---- scenarios ---------------------------------------------------------------


def heartbeats(t):
    """Item 1: heart-beat:1000,1000 gets 1 s heart-beats both ways; 1.0 too."""
    conn, rec = t.connect(heartbeats=(1000, 1000))
    time.sleep(3.5)
    out = {
        "connected_heart_beat": rec.connected.headers.get("heart-beat"),
        "heartbeats_in_3_5s_at_least_2": rec.heartbeats >= 2,
        "still_connected_after_3_5s": conn.is_connected(),
    }
    close(conn)
    raw = t.raw()
    raw.send(f"CONNECT\nlogin:{t.login}\npasscode:{t.passcode}\n\n\0")
    command, headers, _ = raw.frame()
    out["v1_0_connected"] = command
    out["v1_0_version"] = headers.get("version")
    out["v1_0_heart_beat"] = headers.get("heart-beat")
    raw.close()
    return out


def errors(t):
    """Item 2: ERROR texts (message header, body) for the same condition."""
    out = {}

    def case(name, action, **connect):
        conn, rec = t.connect(**connect) if connect.get("wait", True) else t.connect(**connect)
        try:
            action(conn, rec)
        except Exception as e:  # the server may close at once
            pass
        out[name] = first_error(rec)
        close(conn)

    case("subscribe /queue/bah/baz", lambda c, r: c.subscribe("/queue/bah/baz", id="1"))
    case("subscribe /topic/bah/baz", lambda c, r: c.subscribe("/topic/bah/baz", id="1"))
    case("subscribe /exchange//foo", lambda c, r: c.subscribe("/exchange//foo", id="1"))
    case("subscribe /bah/baz", lambda c, r: c.subscribe("/bah/baz", id="1"))
    case("send without destination", lambda c, r: c.send_frame("SEND", {}, "x"))
    case(
        "duplicate subscription id",
        lambda c, r: (c.subscribe(f"/topic/{unique('dup')}", id="1"), c.subscribe(f"/topic/{unique('dup')}", id="1")),
    )
    case("ack without id (1.2)", lambda c, r: c.send_frame("ACK", {}))
    case("nack without id (1.2)", lambda c, r: c.send_frame("NACK", {}))
    missing = unique("no-such-exchange")

    def send_missing(c, r):
        c.send(f"/exchange/{missing}/k", "x", receipt="r1")

    case("send to a missing exchange", send_missing)
    if out["send to a missing exchange"]:
        out["send to a missing exchange"] = [
            out["send to a missing exchange"][0],
            out["send to a missing exchange"][1].replace(missing, "<name>"),
        ]
    case("commit of an unknown transaction", lambda c, r: c.send_frame("COMMIT", {"transaction": "nope"}))
    # Wrong credentials.
    conn, rec = t.connect(login=t.login, passcode="wrong-" + RUN, wait=False)
    out["bad passcode"] = first_error(rec)
    close(conn)
    # Unsupported version.
    raw = t.raw()
    raw.send(f"CONNECT\naccept-version:2.0\nlogin:{t.login}\npasscode:{t.passcode}\n\n\0")
    frame = raw.frame(timeout=5)
    out["unsupported version"] = [frame[1].get("message"), frame[2].decode()] if frame and frame[0] == "ERROR" else frame
    raw.close()
    return out


def nack(t):
    """Item 3: NACK (1.0 too), requeue case-insensitive, several nacked at once."""
    out = {}
    queue = f"/queue/{unique('nack')}"
    sub, rec = t.connect()
    sub.subscribe(queue, id="s", ack="client", headers={"prefetch-count": "5"})
    pub, _ = t.connect()
    for i in range(3):
        pub.send(queue, f"m{i}", receipt=f"r{i}")
    rec.wait(lambda: len(rec.messages) >= 3)
    out["first_deliveries"] = [[m.body, m.headers.get("redelivered")] for m in rec.messages]
    if len(rec.messages) >= 3:
        # client mode: NACK of the last one nacks all three.
        sub.nack(rec.messages[2].headers.get("ack"))
        rec.wait(lambda: len(rec.messages) >= 6, timeout=5)
        out["redelivered_after_nack"] = sorted([m.body, m.headers.get("redelivered")] for m in rec.messages[3:])
        if len(rec.messages) >= 6:
            # requeue:False (any case) drops them.
            sub.nack(rec.messages[5].headers.get("ack"), requeue="False")
            time.sleep(1.0)
            out["after_nack_requeue_False"] = len(rec.messages) - 6
    out["errors"] = error_texts(rec)
    close(sub)
    close(pub)

    # STOMP 1.0: NACK with message-id (RabbitMQ's extension).
    queue10 = f"/queue/{unique('nack10')}"
    raw = t.raw()
    raw.send(f"CONNECT\nlogin:{t.login}\npasscode:{t.passcode}\n\n\0")
    command, headers, _ = raw.frame()
    out["v1_0_connected"] = [command, headers.get("version")]
    raw.send(f"SUBSCRIBE\ndestination:{queue10}\nack:client\nreceipt:sub\n\n\0")
    raw.frame()
    raw.send(f"SEND\ndestination:{queue10}\n\nhello\0")
    frame = raw.frame()
    out["v1_0_first"] = [frame[0], frame[2].decode(), frame[1].get("redelivered")] if frame else None
    if frame and frame[0] == "MESSAGE":
        raw.send(f"NACK\nmessage-id:{frame[1].get('message-id')}\n\n\0")
        again = raw.frame(timeout=5)
        out["v1_0_after_nack"] = [again[0], again[2].decode(), again[1].get("redelivered")] if again else None
        if again and again[0] == "MESSAGE":
            raw.send(f"ACK\nmessage-id:{again[1].get('message-id')}\n\n\0")
    raw.send("DISCONNECT\nreceipt:bye\n\n\0")
    raw.frame(timeout=5)
    raw.close()
    return out


def redelivered(t):
    """Item 6: redelivered:false on a first delivery from a queue."""
    queue = f"/queue/{unique('redeliv')}"
    sub, rec = t.connect()
    sub.subscribe(queue, id="s", ack="auto")
    pub, _ = t.connect()
    pub.send(queue, "once")
    rec.wait(lambda: rec.messages)
    out = {"queue": rec.messages[0].headers.get("redelivered") if rec.messages else None}
    topic = f"/topic/{unique('redeliv')}"
    sub.subscribe(topic, id="t", ack="auto", receipt="st")
    rec.wait(lambda: "st" in rec.receipts)
    pub.send(topic, "b")
    rec.wait(lambda: len(rec.messages) >= 2)
    out["topic"] = rec.messages[1].headers.get("redelivered") if len(rec.messages) >= 2 else None
    close(sub)
    close(pub)
    return out


def transaction_receipt(t):
    """Item 7: a SEND's RECEIPT inside a transaction comes after COMMIT."""
    queue = f"/queue/{unique('tx')}"
    conn, rec = t.connect()
    tx = conn.begin()
    conn.send(queue, "in tx", transaction=tx, receipt="r-send")
    time.sleep(1.0)
    out = {"receipts_before_commit": list(rec.receipts)}
    conn.commit(tx, receipt="r-commit")
    rec.wait(lambda: {"r-send", "r-commit"} <= set(rec.receipts), timeout=5)
    out["receipts_after_commit"] = sorted(rec.receipts)
    out["errors"] = error_texts(rec)
    close(conn)
    return out


def queue_arguments(t):
    """Item 8: typed queue arguments; SEND to a queue with other arguments."""
    queue = f"/queue/{unique('args')}"
    args = {"x-expires": "70000", "x-max-length": "10", "x-message-ttl": "60000", "x-max-priority": "5"}
    out = {}
    for name in ["first", "second"]:
        conn, rec = t.connect()
        conn.subscribe(queue, id="s", headers=dict(args), receipt="sub")
        rec.wait(lambda: rec.receipts or rec.errors)
        out[f"{name} subscribe with arguments"] = "ok" if rec.receipts else first_error(rec)
        close(conn)
    conn, rec = t.connect()
    conn.send(queue, "plain", receipt="send")
    rec.wait(lambda: rec.receipts or rec.errors)
    out["send without arguments"] = "ok" if rec.receipts else first_error(rec)
    close(conn)
    quorum = f"/queue/{unique('quorum')}"
    conn, rec = t.connect()
    conn.subscribe(quorum, id="s", headers={"x-queue-type": "quorum"}, receipt="sub")
    rec.wait(lambda: rec.receipts or rec.errors)
    out["subscribe x-queue-type quorum"] = "ok" if rec.receipts else first_error(rec)
    if rec.receipts:
        conn.send(quorum, "q", receipt="send")
        rec.wait(lambda: rec.messages or rec.errors)
        out["quorum message"] = rec.messages[0].body if rec.messages else first_error(rec)
    close(conn)
    return out


def large(t):
    """Item 11: a 16 MiB message reaches two topic subscribers."""
    topic = f"/topic/{unique('large')}"
    subs = []
    for i in range(2):
        conn, rec = t.connect()
        conn.subscribe(topic, id="s", receipt="sub")
        rec.wait(lambda: rec.receipts)
        subs.append((conn, rec))
    pub, prec = t.connect()
    body = "x" * (16 * 1024 * 1024)
    pub.send(topic, body, receipt="big")
    prec.wait(lambda: prec.receipts or prec.errors, timeout=60)
    out = {"publisher": "receipt" if prec.receipts else first_error(prec)}
    sizes = []
    for conn, rec in subs:
        rec.wait(lambda: rec.messages or rec.errors or rec.disconnected, timeout=60)
        sizes.append(len(rec.messages[0].body) if rec.messages else first_error(rec))
        close(conn)
    out["delivered sizes"] = sizes
    close(pub)
    return out


def fast_publisher(t):
    """Item 12: 10,000 SENDs as fast as possible, then DISCONNECT: all published."""
    n = 10_000
    queue = f"/queue/{unique('fast')}"
    # Declare the queue first (a SUBSCRIBE), so that counting starts empty.
    counter, crec = t.connect()
    counter.subscribe(queue, id="c", ack="auto", receipt="sub")
    crec.wait(lambda: crec.receipts)
    pub, prec = t.connect()
    started = time.monotonic()
    sent = 0
    try:
        for i in range(n):
            pub.send(queue, f"m{i}")
            sent += 1
        pub.disconnect()
    except Exception as e:
        pass
    crec.wait(lambda: len(crec.messages) >= n, timeout=90)
    out = {
        "sent": sent,
        "received": len(crec.messages),
        "publisher_errors": error_texts(prec),
    }
    print(f"fast_publisher: {sent} sent, {len(crec.messages)} received in {time.monotonic() - started:.1f} s", file=sys.stderr)
    close(counter)
    return out


def send_then_disconnect(t):
    """Item 12: a SEND followed at once by DISCONNECT (one WebSocket message) is published."""
    queue = f"/queue/{unique('lastword')}"
    counter, crec = t.connect()
    counter.subscribe(queue, id="c", ack="auto", receipt="sub")
    crec.wait(lambda: crec.receipts)
    raw = t.raw()
    raw.send(f"CONNECT\naccept-version:1.2\nlogin:{t.login}\npasscode:{t.passcode}\n\n\0")
    raw.frame()
    raw.send(f"SEND\ndestination:{queue}\nreceipt:last\n\nlast words\0DISCONNECT\nreceipt:bye\n\n\0")
    frames = []
    while True:
        f = raw.frame(timeout=5)
        if f is None:
            break
        frames.append([f[0], f[1].get("receipt-id")])
    raw.close()
    # And one that closes the socket without waiting for anything.
    raw = t.raw()
    raw.send(f"CONNECT\naccept-version:1.2\nlogin:{t.login}\npasscode:{t.passcode}\n\n\0")
    raw.frame()
    raw.send(f"SEND\ndestination:{queue}\n\nno wait\0DISCONNECT\n\n\0")
    raw.close()
    crec.wait(lambda: len(crec.messages) >= 2, timeout=10)
    out = {"frames after SEND+DISCONNECT": frames, "received": sorted(m.body for m in crec.messages)}
    close(counter)
    return out


SCENARIOS = {
    "heartbeats": heartbeats,
    "errors": errors,
    "nack": nack,
    "redelivered": redelivered,
    "transaction_receipt": transaction_receipt,
    "queue_arguments": queue_arguments,
    "large": large,
    "fast_publisher": fast_publisher,
    "send_then_disconnect": send_then_disconnect,
}

# A check that is not enforced yet (printed as "skip").
PENDING = object()

# What RabbitMQ's Web-STOMP (3.10 to 4.x) answers: stompgate must do the same
# (or better, where Web-STOMP closes without saying why: docs/protocol.md).
EXPECTED = {
    "heartbeats": {
        "connected_heart_beat": "1000,1000",
        "heartbeats_in_3_5s_at_least_2": True,
        "still_connected_after_3_5s": True,
        "v1_0_connected": "CONNECTED",
        "v1_0_version": "1.0",
        "v1_0_heart_beat": "0,0",
    },
    "errors": {
        "subscribe /queue/bah/baz": ["Invalid destination", "'/bah/baz' is not a valid queue destination\n"],
        "subscribe /topic/bah/baz": ["Invalid destination", "'/bah/baz' is not a valid topic destination\n"],
        "subscribe /exchange//foo": ["Invalid destination", "'//foo' is not a valid exchange destination\n"],
        "subscribe /bah/baz": ["Unknown destination", None],
        "send without destination": ["Missing destination", None],
        "duplicate subscription id": ["Duplicated subscription identifier", None],
        "ack without id (1.2)": ["Missing header", None],
        "nack without id (1.2)": ["Missing header", None],
        "send to a missing exchange": ["not_found", "NOT_FOUND - no exchange '<name>' in vhost '/'"],
        "commit of an unknown transaction": ["Bad transaction", None],
        "bad passcode": ["Bad CONNECT", None],
        "unsupported version": ["Version mismatch", "Supported versions are 1.0,1.1,1.2\n"],
    },
    "nack": {
        "first_deliveries": [["m0", "false"], ["m1", "false"], ["m2", "false"]],
        "redelivered_after_nack": [["m0", "true"], ["m1", "true"], ["m2", "true"]],
        "after_nack_requeue_False": 0,
        "errors": [],
        "v1_0_connected": ["CONNECTED", "1.0"],
        "v1_0_first": ["MESSAGE", "hello", "false"],
        "v1_0_after_nack": ["MESSAGE", "hello", "true"],
    },
    "redelivered": {"queue": "false", "topic": "false"},
    "transaction_receipt": {
        "receipts_before_commit": [],
        "receipts_after_commit": ["r-commit", "r-send"],
        "errors": [],
    },
    "queue_arguments": {
        "first subscribe with arguments": "ok",
        "second subscribe with arguments": "ok",
        "send without arguments": "ok",
        "subscribe x-queue-type quorum": "ok",
        "quorum message": "q",
    },
    "large": {"publisher": "receipt", "delivered sizes": [16 * 1024 * 1024, 16 * 1024 * 1024]},
    "fast_publisher": {"sent": 10_000, "received": 10_000, "publisher_errors": []},
    "send_then_disconnect": {
        "frames after SEND+DISCONNECT": [["RECEIPT", "last"], ["RECEIPT", "bye"]],
        "received": ["last words", "no wait"],
    },
}


def matches(expected, actual):
    """None in `expected` matches anything (texts that name generated things)."""
    if expected is None:
        return True
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(matches(e, a) for e, a in zip(expected, actual))
    return expected == actual


def run(target, names):
    results = {}
    for name in names:
        try:
            results[name] = SCENARIOS[name](target)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            results[name] = {"exception": f"{type(e).__name__}: {e}"}
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--login", default="guest")
    parser.add_argument("--passcode", default="guest")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--check", action="store_true", help="assert Web-STOMP's answers; exit 1 on a difference")
    args = parser.parse_args()
    names = args.only or list(SCENARIOS)
    results = run(Target(args.url, args.login, args.passcode), names)
    if not args.check:
        print(json.dumps(results, indent=1, sort_keys=True))
        return 0
    passed = failed = 0
    for name in names:
        for key, want in EXPECTED[name].items():
            got = results[name].get(key, results[name].get("exception"))
            if want is PENDING:
                print(f"skip {name}: {key}: {got!r}")
            elif matches(want, got):
                passed += 1
                print(f"ok   {name}: {key}")
            else:
                failed += 1
                print(f"FAIL {name}: {key}: expected {want!r}, got {got!r}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
