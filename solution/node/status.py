"""A node's status: `snapshot(node) -> dict` (pure), and the `python3 -m node status` client.

Rule: snapshot only reads state; the client speaks the same wire protocol as peers (HELLO, then
STATUS_REQ), so status works on the node's one port with no extra listener. The client uses
stdlib sockets and never imports gevent, so the image's HEALTHCHECK costs a bare Python start.
"""

import os
import socket
import sys
import time

from . import wire
from .config import DEFAULT_PORT, parse_address

STATUS_TIMEOUT_S = 3.0


def snapshot(node):
    s = node.state
    info = s.info
    n = info.n_pieces if info else 0
    return {
        "node_id": s.node_id.hex(),
        "file_info": bool(info),
        "size": info.size if info else None,
        "pieces": n,
        "have": s.have_count,
        "percent": round(100.0 * s.have_count / n, 2) if n else (100.0 if info else 0.0),
        "complete": s.complete,
        "uptime_s": round(time.monotonic() - s.started, 3),
        "complete_after_s": round(s.completed_at - s.started, 3) if s.completed_at else None,
        "rate_in_mbs": round(s.rates["in"] / 1e6, 2),
        "rate_out_mbs": round(s.rates["out"] / 1e6, 2),
        "peers_connected": len(s.conns),
        "peers_known": len(s.peers),
        **s.counters,
    }


def fetch(host, port, timeout=STATUS_TIMEOUT_S):
    """Ask a running node for its status dict."""
    import json  # the client's alone: every node imports this module, before it listens
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(wire.encode(wire.Hello(os.urandom(8), 0)) + wire.encode(wire.StatusRequest()))
        dec = wire.Decoder()
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("node closed the connection before answering")
            for msg in dec.feed(data):
                if isinstance(msg, wire.Status):
                    return json.loads(msg.body)


def cli(argv):
    """Print a node's status; exit 0 when it answered (the HEALTHCHECK's meaning of healthy)."""
    as_json = "--json" in argv
    args = [a for a in argv if a != "--json"]
    if len(args) != 1:
        sys.stderr.write("usage: python3 -m node status HOST[:PORT] [--json]\n")
        return 2
    host, port = parse_address(args[0], DEFAULT_PORT, "address")
    try:
        st = fetch(host, port)
    except (OSError, wire.WireError, ValueError) as e:
        sys.stderr.write(f"status: {host}:{port}: {e}\n")
        return 1
    if as_json:
        import json
        sys.stdout.write(json.dumps(st, indent=2) + "\n")
    else:
        for k, v in st.items():
            sys.stdout.write(f"{k:>18}: {v}\n")
    return 0
