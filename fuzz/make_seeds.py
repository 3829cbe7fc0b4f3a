#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets into fuzz/corpus/.

    python3 fuzz/make_seeds.py

The seeds are named seed-*; the rest of each corpus was grown by fuzzing and
minimized with `cargo fuzz cmin`. Rerun this after changing the input layout
of a target (and minimize again).

decode_frames: byte 0 picks the escaping (bits 0-1: 0 None, 1 V11, 2 V12) and
the limits (bit 2: tiny), byte 1 the number of chunk sizes (0-3), then the
chunk sizes minus one, then the STOMP stream.

ws_frames: byte 0 picks the message limit (bits 0-1: 4096, 200, 1, 0), byte
1 the number of chunk sizes (0-3; 0: one byte at a time), then the chunk
sizes minus one, then the client frames (masked, as RFC 6455 asks).

session_sequences: the `arbitrary` (1.x) encoding of `Input` in
fuzz_targets/session_sequences.rs: integers little-endian, an enum variant as
a u32 `x` with variant = (x * variants) >> 32, a bool as one byte (odd =
true), `Option` as a bool then the value, a `Vec` field as a continuation
bool before each element and a false one after the last; the top-level
`ops` list is the same without the final false (it takes the rest). The
variant orders below must follow the enums of the target.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------- decode_frames

DECODE_SEEDS = {
    "connect-stompjs": (2, [], b"CONNECT\naccept-version:1.2,1.1,1.0\nheart-beat:10000,10000\n\n\x00"),
    "connect-login-crlf": (2, [3], b"CONNECT\r\naccept-version:1.2\r\nhost:/\r\nlogin:guest\r\npasscode:guest\r\n\r\n\x00"),
    "stomp-1-0": (0, [], b"STOMP\nlogin:bob\npasscode:a:b\\n\n\n\x00"),
    "send-content-length-nuls": (2, [5, 1], b"SEND\ndestination:/queue/q\ncontent-type:application/octet-stream\ncontent-length:5\n\na\x00b\x00c\x00"),
    "send-no-length": (1, [], b"SEND\ndestination:/topic/a\nreceipt:r1\n\nhello world\x00"),
    "subscribe": (2, [7, 2, 30], b"SUBSCRIBE\nid:sub-0\ndestination:/exchange/e/k\nack:client-individual\nprefetch-count:10\n\n\x00"),
    "ack-nack": (2, [], b"ACK\nid:T_sub-0@@1\ntransaction:tx1\n\n\x00NACK\nid:T_sub-0@@2\nrequeue:false\n\n\x00"),
    "heartbeats": (2, [1], b"\n\r\n\n\r\nSEND\ndestination:/queue/q\n\n\x00\n\n"),
    "crlf-frames": (1, [2], b"BEGIN\r\ntransaction:tx1\r\n\r\n\x00\r\nCOMMIT\r\ntransaction:tx1\r\nreceipt:r2\r\n\r\n\x00"),
    "escaped-headers-v12": (2, [], b"SEND\ndestination:/queue/a\\cb\nk\\cey:a\\\\b\\nc\\rd\n\nbody\x00"),
    "escaped-headers-v11": (1, [4], b"MESSAGE\nsubscription:0\nmessage-id:T_0@@7\nx:a\\cb\\\\c\\nd\rz\n\n\x00"),
    "repeated-headers": (2, [], b"SEND\ndestination:/queue/q\ndestination:/queue/other\ncontent-length:3\ncontent-length:9\n\nabc\x00"),
    "disconnect-receipt": (2, [], b"UNSUBSCRIBE\nid:sub-0\n\n\x00DISCONNECT\nreceipt:77\n\n\x00"),
    "tiny-limits-over": (6, [], b"SEND\nh1:v\nh2:v\nh3:v\nh4:v\nh5:v\n\n\x00"),
    "bad-escape": (2, [], b"SEND\nx:\\t\n\n\x00"),
    "error-frame-1-0": (0, [], b"ERROR\nmessage:malformed frame\ncontent-type:text/plain\ncontent-length:4\n\noops\x00"),
}


def decode_seed(mode, chunks, stream):
    return bytes([mode, len(chunks)]) + bytes(c - 1 for c in chunks) + stream


# ------------------------------------------------------------------ ws_frames

WS_CONTINUATION, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def ws(opcode, payload=b"", fin=True, rsv=0, mask=b"\x37\xfa\x21\x3d", length=None, form=None):
    """A client frame: masked (unless mask is None), the shortest length
    form unless `form` (7, 16, 64) says otherwise; `length` overrides the
    announced length (the payload is written as given)."""
    n = len(payload) if length is None else length
    if form is None:
        form = 7 if n < 126 else 16 if n <= 0xFFFF else 64
    out = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if mask is not None else 0
    if form == 7:
        out += bytes([mask_bit | n])
    elif form == 16:
        out += bytes([mask_bit | 126]) + struct.pack(">H", n)
    else:
        out += bytes([mask_bit | 127]) + struct.pack(">Q", n)
    if mask is None:
        return out + payload
    return out + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_close(code, reason=b""):
    return ws(WS_CLOSE, struct.pack(">H", code) + reason)


CONNECT = b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00"
SNOWMAN = "\u2603".encode()

WS_SEEDS = {
    "connect": (0, [], ws(WS_TEXT, CONNECT)),
    "connect-in-pieces": (0, [2, 5, 1], ws(WS_TEXT, CONNECT)),
    "fragmented-with-ping": (0, [6], ws(WS_TEXT, CONNECT[:10], fin=False) + ws(WS_PING, b"p")
                             + ws(WS_CONTINUATION, CONNECT[10:20], fin=False)
                             + ws(WS_CONTINUATION, CONNECT[20:])),
    "utf8-split": (0, [], ws(WS_TEXT, b"a" + SNOWMAN[:1], fin=False) + ws(WS_CONTINUATION, SNOWMAN[1:])),
    "binary-not-utf8": (0, [3], ws(WS_BINARY, b"\xff\xfe\x00")),
    "text-not-utf8": (0, [], ws(WS_TEXT, b"ok\xff")),
    "ping-pong-close": (0, [1, 2], ws(WS_PING, b"abc") + ws(WS_PONG, b"x") + ws_close(1000, b"bye")),
    "close-empty": (0, [], ws(WS_CLOSE)),
    "close-one-byte": (0, [], ws(WS_CLOSE, b"\x03")),
    "close-1005": (0, [], ws_close(1005)),
    "close-4000-bad-reason": (0, [], ws_close(4000, b"\xc3")),
    "length-16": (0, [200, 100], ws(WS_BINARY, bytes(range(256)) + b"x" * 44)),
    "length-64-small": (0, [], ws(WS_TEXT, b"hello", form=64)),
    "length-64-over": (0, [], ws(WS_BINARY, b"", length=5000)),
    "length-2-40": (0, [9], ws(WS_BINARY, b"", length=1 << 40)),
    "length-top-bit": (0, [], ws(WS_BINARY, b"", length=(1 << 64) - 1)),
    "unmasked": (0, [], ws(WS_TEXT, b"hi", mask=None)),
    "rsv1": (0, [], ws(WS_TEXT, b"hi", rsv=4)),
    "opcode-3": (0, [], ws(0x3, b"hi")),
    "ping-126": (0, [], ws(WS_PING, b"p" * 126)),
    "ping-fragmented": (0, [], ws(WS_PING, b"p", fin=False)),
    "stray-continuation": (0, [], ws(WS_CONTINUATION, b"x")),
    "interleaved": (0, [], ws(WS_TEXT, b"a", fin=False) + ws(WS_BINARY, b"b")),
    "empty-continuations": (0, [], ws(WS_TEXT, b"SEND\n", fin=False)
                            + b"".join(ws(WS_CONTINUATION, fin=False) for _ in range(40))
                            + ws(WS_CONTINUATION, b"\n\x00")),
    "one-byte-fragments": (1, [], ws(WS_TEXT, b"S", fin=False)
                           + b"".join(ws(WS_CONTINUATION, bytes([c]), fin=False) for c in b"END\n\n")
                           + ws(WS_CONTINUATION, b"\x00")),
    "limit-200-fragments-over": (1, [7], ws(WS_BINARY, b"a" * 150, fin=False) + ws(WS_CONTINUATION, b"b" * 51)),
    "limit-1": (2, [], ws(WS_TEXT, b"a") + ws(WS_TEXT, b"ab")),
    "limit-0": (3, [], ws(WS_TEXT) + ws(WS_PING) + ws(WS_BINARY, b"x")),
}


def ws_seed(mode, chunks, stream):
    return bytes([mode, len(chunks)]) + bytes((c - 1) & 0xFF for c in chunks) + stream


# ------------------------------------------------------------ session_sequences

def variant(k, n):
    """The smallest u32 that the derive maps to variant k of n."""
    return struct.pack("<I", -(-(k << 32) // n))


# Variant counts and orders of the target's enums.
OP = 8  # Frame, Typical, Wire, Deliver, BrokerError, ProtocolError, RestartSubscription, TokenExpired
TYPICAL = 7  # Connect, Subscribe, Unsubscribe, Ack, Send, Transaction, Disconnect
NAME = 3  # Known, Active, Other
TAG = 2  # Small, Any
TEXT = 2  # Known, Other
DEST = 2  # Known, Other
HEADER_NAME = 2  # Known, Other
VALUE = 7  # Known, Destination, Subscription, MessageId, Delivered, Active, Other

# Indices into the target's lists.
DESTINATIONS = ["/topic/a", "/topic/b.c", "/queue/q", "/exchange/e/k", "/exchange/e",
                "/amq/queue/x", "/temp-queue/t", "/reply-queue/r", "/user/queue/n",
                "/user/bob/queue/n", "/stompgate/token"]
D = {d: i for i, d in enumerate(DESTINATIONS)}
SUBS = ["0", "1", "sub-1", "/topic/a", "/queue/q", "/temp-queue/t", ""]
S = {s: i for i, s in enumerate(SUBS)}
VERSIONS = {"1.2": 0, "1.1": 1, "1.0": 2, "1.0,1.1,1.2": 3}
ACKS = {"client": 0, "client-individual": 1, "auto": 2}
TX = {"tx1": 0, "tx2": 1}
HEADER_NAMES = {"destination": 0, "id": 1, "ack": 2, "receipt": 3, "transaction": 4,
                "message-id": 5, "accept-version": 7, "heart-beat": 8, "host": 9,
                "prefetch-count": 12, "durable": 13, "x-queue-name": 16, "requeue": 18,
                "reply-to": 19}
VALUES = {"": 0, "0": 1, "1": 2, "true": 4, "false": 5, "client": 7, "1.2": 11,
          "10000,10000": 16, "tx1": 24, "r1": 26}
COMMANDS = {"CONNECT": 0, "STOMP": 1, "SEND": 2, "SUBSCRIBE": 3, "UNSUBSCRIBE": 4, "ACK": 5,
            "NACK": 6, "BEGIN": 7, "COMMIT": 8, "ABORT": 9, "DISCONNECT": 10, "MESSAGE": 12}
CONFIG = {"open": 0, "tiny": 1, "users": 2}


def u8(x):
    return bytes([x])


def boolean(x):
    return b"\x01" if x else b"\x00"


def option(x):
    return b"\x00" if x is None else b"\x01" + x


def vec(elements):
    return b"".join(b"\x01" + e for e in elements) + b"\x00"


def op(k):
    return b"\x01" + variant(k, OP)


def typical(k):
    return op(1) + variant(k, TYPICAL)


def connect(version="1.2", heart_beat=False, login=False):
    return typical(0) + u8(VERSIONS[version]) + boolean(heart_beat) + boolean(login)


def subscribe(dest, sub, ack="client", receipt=True):
    return typical(1) + u8(D[dest]) + u8(S[sub]) + u8(ACKS[ack]) + boolean(receipt)


def unsubscribe(active=0, receipt=True):
    return typical(2) + u8(active) + boolean(receipt)


def ack(delivered=0, nack=False, tx=None, receipt=True):
    return (typical(3) + u8(delivered) + boolean(nack)
            + option(None if tx is None else u8(TX[tx])) + boolean(receipt))


def send(dest, tx=None, reply_to=False, receipt=True):
    return (typical(4) + u8(D[dest]) + option(None if tx is None else u8(TX[tx]))
            + boolean(reply_to) + boolean(receipt))


def transaction(verb, tx, receipt=True):
    return typical(5) + u8({"BEGIN": 0, "COMMIT": 1, "ABORT": 2}[verb]) + u8(TX[tx]) + boolean(receipt)


def disconnect(receipt=True):
    return typical(6) + boolean(receipt)


def name_known(sub):
    return variant(0, NAME) + u8(S[sub])


def name_active(i=0):
    return variant(1, NAME) + u8(i)


def tag(generation, seq):
    return variant(0, TAG) + u8(generation) + u8(seq)


def text(i):
    return variant(0, TEXT) + u8(i)


def deliver(name, tag_bytes, headers=(), body=b""):
    return (op(3) + name + tag_bytes + vec(text(a) + text(b) for a, b in headers)
            + vec(u8(c) for c in body))


def wire(data):
    return op(2) + vec(u8(c) for c in data)


def broker_error(i=2):
    return op(4) + text(i)


def protocol_error(i=0):
    return op(5) + text(i)


def restart(name, generation):
    return op(6) + name + u8(generation)


def token_expired():
    return op(7)


def frame(command, dest=None, headers=(), body=b"", via_wire=False):
    """A vocabulary frame: headers are (name, value) from the lists above."""
    return (op(0) + u8(COMMANDS[command])
            + option(None if dest is None else variant(0, DEST) + u8(D[dest]))
            + vec(variant(0, HEADER_NAME) + u8(HEADER_NAMES[n]) + variant(0, VALUE) + u8(VALUES[v])
                  for n, v in headers)
            + vec(u8(c) for c in body) + boolean(via_wire))


def frame_ack_delivered(command="ACK", delivered=0, via_wire=True):
    """ACK/NACK whose id is the message-id of a delivered message."""
    return (op(0) + u8(COMMANDS[command]) + option(None)
            + vec([variant(0, HEADER_NAME) + u8(HEADER_NAMES["id"]) + variant(4, VALUE) + u8(delivered)])
            + vec([]) + boolean(via_wire))


def session(config, *ops):
    return u8(CONFIG[config]) + b"".join(ops)


SESSION_SEEDS = {
    "client-ack-flow": session(
        "open", connect("1.2"), subscribe("/queue/q", "0", "client"),
        deliver(name_active(0), tag(0, 1), body=b"m1"), deliver(name_active(0), tag(0, 2)),
        ack(1), ack(0, nack=True), unsubscribe(0), disconnect()),
    "client-individual-1-1": session(
        "open", connect("1.1", heart_beat=True), subscribe("/amq/queue/x", "sub-1", "client-individual"),
        deliver(name_active(0), tag(0, 3), headers=[(5, 6)]), ack(0, nack=True), ack(0)),
    "version-1-0-topic": session(
        "open", connect("1.0"), subscribe("/topic/a", "0", "auto"), send("/topic/a"),
        deliver(name_known("0"), tag(0, 1)),
        frame("UNSUBSCRIBE", "/topic/a"), disconnect(receipt=False)),
    "transaction-commit": session(
        "open", connect("1.2"), subscribe("/queue/q", "1", "client"),
        deliver(name_active(0), tag(0, 1)), transaction("BEGIN", "tx1"),
        send("/queue/q", tx="tx1"), ack(0, tx="tx1"), send("/exchange/e/k", tx="tx1"),
        transaction("COMMIT", "tx1"), transaction("ABORT", "tx2")),
    "transaction-abort": session(
        "open", connect("1.0,1.1,1.2"), transaction("BEGIN", "tx2"), send("/topic/a", tx="tx2"),
        transaction("ABORT", "tx2"), send("/queue/q", tx="tx2")),
    "tiny-limits": session(
        "tiny", connect("1.2"), subscribe("/queue/q", "0"), subscribe("/topic/a", "1"),
        subscribe("/exchange/e/k", "sub-1"), transaction("BEGIN", "tx1"), transaction("BEGIN", "tx2")),
    "tiny-transaction-frames": session(
        "tiny", connect("1.2"), transaction("BEGIN", "tx1"), send("/queue/q", tx="tx1"),
        send("/queue/q", tx="tx1"), send("/queue/q", tx="tx1")),
    "users-bob": session(
        "users", connect("1.2", login=True), subscribe("/user/queue/n", "0", "client"),
        send("/user/bob/queue/n"), subscribe("/amq/queue/x", "1"), send("/temp-queue/t")),
    "reply-to-temp-queue": session(
        "open", connect("1.2"), send("/queue/q", reply_to=True),
        deliver(name_known("/temp-queue/t"), tag(0, 1)), frame("UNSUBSCRIBE", None, [("id", "")])),
    "consumer-restart": session(
        "open", connect("1.2"), subscribe("/queue/q", "0", "client-individual"),
        deliver(name_active(0), tag(0, 1)), restart(name_active(0), 1),
        deliver(name_active(0), tag(1, 1)), ack(0), ack(1), ack(1)),
    "wire-conversation": session(
        "open",
        wire(b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00"
             b"SUBSCRIBE\nid:0\ndestination:/queue/q\nack:client\nreceipt:r1\n\n\x00\n"),
        deliver(name_active(0), tag(0, 1)),
        wire(b"SEND\ndestination:/topic/a\ncontent-length:3\n\na\x00b\x00DISCONNECT\nreceipt:r2\n\n\x00")),
    "wire-malformed": session(
        "open", wire(b"CONNECT\naccept-version:1.2\n\n\x00"), wire(b"SEND\nx:\\t\n\n\x00"),
        frame("SEND", "/queue/q")),
    "token-expired": session("open", connect("1.2"), token_expired(), send("/queue/q")),
    "broker-error": session("open", connect("1.1"), broker_error(2), deliver(name_known("0"), tag(0, 0))),
    "protocol-error-before-connect": session("open", protocol_error(0), connect("1.2")),
    "not-connected": session("open", send("/queue/q"), connect("1.2")),
    "vocabulary-frames": session(
        "open",
        frame("CONNECT", None, [("accept-version", "1.2"), ("heart-beat", "10000,10000")], via_wire=True),
        frame("SUBSCRIBE", "/queue/q", [("id", "0"), ("ack", "client"), ("prefetch-count", "1"),
                                        ("x-queue-name", "tx1"), ("durable", "true")], via_wire=True),
        deliver(name_active(0), tag(0, 1)),
        frame_ack_delivered("NACK"),
        frame("SEND", "/queue/q", [("receipt", "r1")], body=b"x\x00y", via_wire=True),
        frame("DISCONNECT", None, [("receipt", "r1")])),
}


def write(directory, name, data):
    path = os.path.join(HERE, "corpus", directory)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "seed-" + name), "wb") as f:
        f.write(data)


def main():
    for name, (mode, chunks, stream) in DECODE_SEEDS.items():
        write("decode_frames", name, decode_seed(mode, chunks, stream))
    for name, data in SESSION_SEEDS.items():
        write("session_sequences", name, data)
    for name, (mode, chunks, stream) in WS_SEEDS.items():
        write("ws_frames", name, ws_seed(mode, chunks, stream))


if __name__ == "__main__":
    main()
