"""A node's status: `snapshot(state) -> dict` (pure), and the `python3 -m node status` client.

Rule: snapshot only reads state; the client speaks the same wire protocol as peers (HELLO, then
STATUS_REQ) through the same Session as a peer link, so status works on the node's one port with
no extra listener. The client uses stdlib sockets and never imports gevent, so the image's
HEALTHCHECK costs a bare Python start.
"""

import os
import socket
import sys
import time

from . import wire
from .config import DEFAULT_PORT, TLS_FLAGS, ConfigError, add_flags, arg_parser, parse_address, parse_tls_flags

STATUS_TIMEOUT_S = 3.0


def snapshot(s, listening=True):
    """The status of a node, from its NodeState (and whether its peer listener accepts)."""
    info = s.info
    n = info.n_pieces if info else 0
    return {
        "node_id": s.node_id.hex(),
        "listening": listening,
        "state": "complete" if s.complete else ("fetching" if info else "metadata"),
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


def fetch(host, port, timeout=STATUS_TIMEOUT_S, tls=None):
    """Ask a running node for its status dict. tls: (cert, key, ca) paths for a closed swarm."""
    import json  # the client's alone: every node imports this module, before it listens
    from .session import Closed, Session
    session = Session(wire.Hello(os.urandom(8), 0))
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = raw
        if tls is not None:
            from .tls import context
            sock = context(*tls, server_side=False).wrap_socket(raw)
        sock.sendall(session.greeting + session.ask_status())
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("node closed the connection before answering")
            try:
                events = session.feed(data)
            except Closed as e:
                raise ConnectionError(str(e)) from None
            for ev in events:
                if type(ev) is wire.Status:
                    return json.loads(ev.body)


def cli(argv, env):
    """Print a node's status; exit 0 when it answered (the HEALTHCHECK's meaning of healthy).
    In a closed swarm it needs a member's certificate: the same --tls-* flags or NODE_TLS_* as a node."""
    p = arg_parser("python3 -m node status")
    p.add_argument("address", help="HOST[:PORT]")
    p.add_argument("--json", action="store_true")
    add_flags(p, TLS_FLAGS, env)
    try:
        ns = p.parse_args(argv)
        host, port = parse_address(ns.address, DEFAULT_PORT, "address")
        cert, key, ca = parse_tls_flags(ns.tls_cert, ns.tls_key, ns.tls_ca)
    except ConfigError as e:
        sys.stderr.write(f"status: {e}\n")
        return 2
    try:
        st = fetch(host, port, tls=(cert, key, ca) if cert else None)
    except (OSError, wire.WireError, ValueError, ConfigError) as e:
        sys.stderr.write(f"status: {host}:{port}: {e}\n")
        return 1
    if ns.json:
        import json
        sys.stdout.write(json.dumps(st, indent=2) + "\n")
    else:
        for k, v in st.items():
            sys.stdout.write(f"{k:>18}: {v}\n")
    return 0
