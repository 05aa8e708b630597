"""Run several nodes in this test process, each bound to its own 127.0.0.x address.

Everything stays on loopback: discovery, when a test turns it on, probes 127.0.0.0/24 only.
"""

import json
import os
import random
import time

import gevent

from node import config, log
from node.main import Node

PORT_RANGE = (20000, 60000)


def free_port():
    return random.Random(os.getpid() ^ time.monotonic_ns()).randrange(*PORT_RANGE)


class LocalSwarm:
    def __init__(self, tmp_path, port=None):
        self.dir = tmp_path
        self.port = port or free_port()
        self.nodes = {}  # index -> Node
        log.configure("warning")

    def ip(self, i):
        return f"127.0.0.{10 + i}"

    def data_path(self, i):
        return str(self.dir / f"data{i}.bin")

    def write_conf(self, i, conf):
        path = self.dir / f"conf{i}.json"
        path.write_text(json.dumps(conf))
        return str(path)

    def start(self, i, conf, data=None, discovery=False, argv=()):
        """conf: dict for torrent.conf; data: bytes for the data file, or None for no file;
        argv: more flags, e.g. ("--http-port", "9100")."""
        if data is not None and not os.path.exists(self.data_path(i)):
            with open(self.data_path(i), "wb") as f:
                f.write(data)
        argv = ["--data", self.data_path(i), "--conf", self.write_conf(i, conf), "--bind", self.ip(i),
                "--port", str(self.port), "--discovery", "on" if discovery else "off",
                "--log-level", "warning", *argv]
        node = Node(config.load(argv, {}))
        node.start()
        self.nodes[i] = node
        return node

    def stop(self, i):
        self.nodes.pop(i).stop()

    def stop_all(self):
        for i in list(self.nodes):
            self.stop(i)

    def wait(self, predicate, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            gevent.sleep(0.02)
        return False

    def wait_complete(self, indices=None, timeout=15.0):
        idx = list(self.nodes) if indices is None else indices
        return self.wait(lambda: all(self.nodes[i].state.complete for i in idx), timeout)

    def file_bytes(self, i):
        with open(self.data_path(i), "rb") as f:
            return f.read()


def decode_frames(buf):
    """Whole frames at the start of `buf` (a bytearray) -> messages; removes them from `buf`.
    With the codec alone, for test peers that do not keep a session's rules."""
    from node import wire
    out = []
    while len(buf) >= wire.HEADER.size:
        kind, n = wire.decode_header(bytes(buf[:wire.HEADER.size]))
        if len(buf) < wire.HEADER.size + n:
            break
        out.append(wire.decode_payload(kind, bytes(buf[wire.HEADER.size:wire.HEADER.size + n])))
        del buf[:wire.HEADER.size + n]
    return out
