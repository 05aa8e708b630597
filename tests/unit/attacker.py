"""A hostile peer, as its own process: `python attacker.py HOST PORT META_ID_HEX N_PIECES KIND CONNS SECS`.

Each of CONNS connections (from 127.0.0.60 + i) says HELLO like a peer, then sends frames of KIND
as fast as the node takes them and never reads a byte; a connection the node closes is opened
again. Only the standard library: it must not share the node's event loop or its tricks.
"""

import os
import random
import socket
import struct
import sys
import threading
import time

HEADER = struct.Struct(">IB")
HELLO, BITFIELD, HAVE, REQUEST, PIECES, REJECT, GET_META, META, PEERS, STATUS_REQ = range(10)
BLOCK_BYTES = 64 << 10  # one sendall's worth of frames
BLOCKS = 4  # made once per connection and cycled: the attacker's CPU goes into sending, not building


def frame(kind, payload=b""):
    return HEADER.pack(len(payload) + 1, kind) + payload


def frames(kind, n_pieces, rng):
    """One block of KIND frames: the largest legal frame of that kind, repeated."""
    rng_ = struct.pack(">II", 0, n_pieces)
    one = {
        "have": lambda: frame(HAVE, rng_),
        "bitfield": lambda: frame(BITFIELD, b"\xff" * ((n_pieces + 7) // 8)),
        "request": lambda: frame(REQUEST, struct.pack(">II", rng.randrange(n_pieces), 1)),
        "reject": lambda: frame(REJECT, rng_),
        "get_meta": lambda: frame(GET_META),
        "peers": lambda: frame(PEERS, b"".join(
            socket.inet_aton(f"127.1.{rng.randrange(256)}.{rng.randrange(1, 255)}") + struct.pack(">H", 9)
            for _ in range(1024))),
        "status_req": lambda: frame(STATUS_REQ),
    }[kind]
    out = bytearray()
    while len(out) < BLOCK_BYTES:
        out += one()
    return bytes(out)


def flood(host, port, meta_id, n_pieces, kind, source_ip, until):
    rng = random.Random(source_ip)
    hello = frame(HELLO, b"P2PS\x01" + os.urandom(8) + struct.pack(">H", 7000) + meta_id)
    blocks = [frames(kind, n_pieces, rng) for _ in range(BLOCKS)]
    while time.monotonic() < until:
        try:
            with socket.create_connection((host, port), timeout=2, source_address=(source_ip, 0)) as s:
                s.sendall(hello)
                s.settimeout(max(0.1, until - time.monotonic()))
                i = 0
                while time.monotonic() < until:
                    s.sendall(blocks[i % BLOCKS])
                    i += 1
        except OSError:
            time.sleep(0.05)


def main(host, port, meta_hex, n_pieces, kind, conns, secs):
    until = time.monotonic() + float(secs)
    threads = [threading.Thread(target=flood, args=(host, int(port), bytes.fromhex(meta_hex), int(n_pieces),
                                                    kind, f"127.0.0.{60 + i}", until), daemon=True)
               for i in range(int(conns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(float(secs) + 5)


if __name__ == "__main__":
    main(*sys.argv[1:])
