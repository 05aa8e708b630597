"""Whole nodes talking over 127.0.0.x in this process: the behaviours a user sees.

Each test builds a small swarm with LocalSwarm, waits (bounded) for completion and checks the
files byte for byte. Discovery stays off except in the discovery test (loopback /24 only).
"""

import json
import os
import random
import subprocess
import sys
import time

import gevent
import gevent.socket
import pytest
from gevent.server import StreamServer

from node.session import Session
from node import log, status, wire
from node.config import parse_file_info
from node.picker import span_bits

from swarmkit import LocalSwarm

SOLUTION = os.path.join(os.path.dirname(__file__), "..", "..", "solution")


@pytest.fixture
def swarm(tmp_path):
    s = LocalSwarm(tmp_path)
    yield s
    s.stop_all()


def peers(swarm, *idx):
    return [swarm.ip(i) for i in idx]


def test_one_seeder_fills_missing_empty_and_garbage_files(swarm, torrent_factory):
    t = torrent_factory(300_000, 4096, seed=1)
    everyone = peers(swarm, 0, 1, 2, 3)
    swarm.start(0, t.conf(everyone), data=t.data)
    swarm.start(1, t.conf(everyone))  # no file at all
    swarm.start(2, t.conf(everyone), data=b"")
    swarm.start(3, t.conf(everyone), data=random.randbytes(t.size + 999))  # garbage, too long
    assert swarm.wait_complete()
    for i in range(4):
        assert swarm.file_bytes(i) == t.data


def test_empty_file_completes_at_once(swarm, torrent_factory):
    t = torrent_factory(0, 1024)
    node = swarm.start(0, t.conf([]), data=b"stale bytes")
    assert swarm.wait(lambda: node.state.completed_at is not None, 5)
    assert swarm.file_bytes(0) == b""


def test_partly_correct_file_keeps_its_good_pieces(swarm, torrent_factory):
    t = torrent_factory(64 * 1024, 1024, seed=2)
    damaged = bytearray(t.data)
    bad = [3, 17, 40, 63]
    for i in bad:
        damaged[i * 1024] ^= 0xFF
    swarm.start(0, t.conf(peers(swarm, 1)), data=t.data)
    node = swarm.start(1, t.conf(peers(swarm, 0)), data=bytes(damaged[:-100]))  # also short
    assert swarm.wait_complete()
    assert swarm.file_bytes(1) == t.data
    assert node.state.counters["pieces_in"] == len(bad)


def test_tiny_pieces_are_fetched_in_ranges_not_one_by_one(swarm, torrent_factory):
    t = torrent_factory(256 * 1024 + 77, 128, seed=3)
    swarm.start(0, t.conf(peers(swarm, 1)), data=t.data)
    node = swarm.start(1, t.conf(peers(swarm, 0)))
    assert swarm.wait_complete()
    assert swarm.file_bytes(1) == t.data
    assert node.state.counters["requests_sent"] * 100 < t.size // 128


def test_links_close_once_both_ends_are_complete(swarm, torrent_factory):
    """Sockets are scarce at 60 nodes: when everyone is done, no link stays open."""
    t = torrent_factory(512 * 1024, 4096, seed=13)
    swarm.start(0, t.conf(peers(swarm, 0, 1, 2, 3, 4, 5)), data=t.data)
    for i in range(1, 6):
        swarm.start(i, t.conf(peers(swarm, 0, 1, 2, 3, 4, 5)))
    assert swarm.wait_complete()
    assert swarm.wait(lambda: not any(n.state.conns for n in swarm.nodes.values()), 5)


def test_a_seeder_says_once_when_every_piece_has_left_it(swarm, torrent_factory, monkeypatch):
    said = []
    monkeypatch.setattr(log, "info", lambda event, **f: said.append(f) if event == "every_piece_sent" else None)
    t = torrent_factory(256 * 1024, 4096, seed=21)
    swarm.start(0, t.conf(peers(swarm, 0, 1)), data=t.data)
    swarm.start(1, t.conf(peers(swarm, 0, 1)))
    assert swarm.wait_complete()
    assert swarm.wait(lambda: said, 5)
    gevent.sleep(0.2)
    assert said == [{"bytes_out": t.size}]  # one seeder, one downloader: each piece left once


def test_many_sources_no_node_has_everything(swarm, torrent_factory):
    t = torrent_factory(1 << 20, 16 * 1024, seed=4)
    n, rng = 5, random.Random(4)
    owners = {p: rng.sample(range(n), rng.randint(1, 2)) for p in range(len(t.parts))}
    everyone = peers(swarm, *range(n))
    for i in range(n):
        blob = bytearray(random.randbytes(t.size))
        for p, who in owners.items():
            if i in who:
                blob[p * t.piece_size:(p + 1) * t.piece_size] = t.piece(p)
        swarm.start(i, t.conf(everyone), data=bytes(blob))
    assert swarm.wait_complete()
    for i in range(n):
        assert swarm.file_bytes(i) == t.data


def test_node_with_empty_peer_list_is_found_by_others(swarm, torrent_factory):
    t = torrent_factory(100_000, 1000, seed=5)
    swarm.start(0, t.conf(peers(swarm, 1)), data=t.data)
    swarm.start(1, t.conf([]))  # knows nobody: must be dialled
    assert swarm.wait_complete()
    assert swarm.file_bytes(1) == t.data


def test_metadata_is_learned_from_a_peer_and_saved(swarm, torrent_factory):
    t = torrent_factory(200_000, 8192, seed=6)
    swarm.start(0, t.conf(peers(swarm, 1)), data=t.data)
    swarm.start(1, t.conf(peers(swarm, 0), file_info=False))
    assert swarm.wait_complete()
    assert swarm.file_bytes(1) == t.data
    swarm.stop(1)
    swarm.stop(0)
    # Restarted with no FileInfo and nobody to ask, it still knows the file from its saved state.
    node = swarm.start(1, t.conf([], file_info=False))
    assert swarm.wait(lambda: node.state.complete, 5)
    assert node.state.counters["bytes_in"] == 0


def test_peer_exchange_spreads_addresses(swarm, torrent_factory):
    t = torrent_factory(50_000, 1000, seed=7)
    swarm.start(0, t.conf([]), data=t.data)
    swarm.start(1, t.conf(peers(swarm, 0)))
    node2 = swarm.start(2, t.conf(peers(swarm, 1)))  # a chain: 2 knows 1, 1 knows 0
    assert swarm.wait_complete()
    assert swarm.wait(lambda: (swarm.ip(0), swarm.port) in node2.state.peers, 5)


def test_restart_keeps_verified_pieces(swarm, torrent_factory):
    t = torrent_factory(2 << 20, 32 * 1024, seed=8)
    half = t.size // 2
    swarm.start(0, t.conf(peers(swarm, 1)), data=t.data)
    swarm.start(1, t.conf(peers(swarm, 0)), data=t.data[:half])  # as if killed half way
    assert swarm.wait_complete()
    assert swarm.nodes[1].state.counters["bytes_in"] == t.size - half
    swarm.stop(1)
    node = swarm.start(1, t.conf(peers(swarm, 0)))
    assert swarm.wait(lambda: node.state.complete, 5)
    assert node.state.counters["bytes_in"] == 0  # nothing fetched twice


def test_self_discovery_on_loopback(swarm, torrent_factory):
    t = torrent_factory(100_000, 4096, seed=9)
    swarm.start(0, t.conf([]), data=t.data, discovery=True)
    swarm.start(1, t.conf([], file_info=False), discovery=True)
    swarm.start(2, t.conf([], file_info=False), discovery=True)
    assert swarm.wait_complete(timeout=10)
    for i in range(3):
        assert swarm.file_bytes(i) == t.data


def test_status_request_reports_progress(swarm, torrent_factory):
    t = torrent_factory(10_000, 1000, seed=10)
    swarm.start(0, t.conf([]), data=t.data)
    assert swarm.wait_complete()
    st = gevent.get_hub().threadpool.apply(status.fetch, (swarm.ip(0), swarm.port))
    assert st["complete"] is True and st["have"] == st["pieces"] == 10
    for key in ("rate_in_mbs", "rate_out_mbs", "peers_connected", "peers_known", "uptime_s",
                "bytes_in", "bytes_out", "file_info", "percent"):
        assert key in st


def announced(ip, port, info, own_ip, timeout=5.0):
    """Connect from own_ip as a peer (HELLO naming a port: a client would not hear of pieces),
    and return what the node announced, its BITFIELD and the HAVEs after it, once that is every
    piece or the node closes the link (silence for `timeout` raises socket.timeout)."""
    sock = gevent.socket.create_connection((ip, port), timeout=timeout, source_address=(own_ip, 0))
    told, full = 0, (1 << info.n_pieces) - 1
    try:
        ses = Session(wire.Hello(os.urandom(8), port, info.meta_id), info)
        sock.sendall(ses.greeting)
        while told != full and (data := sock.recv(65536)):
            for msg in ses.feed(data):
                if isinstance(msg, wire.Bitfield):
                    told |= int.from_bytes(msg.bits, "little")
                elif isinstance(msg, wire.Have):
                    told |= span_bits(msg.first, msg.count)
        return told
    finally:
        sock.close()


def test_a_node_serves_while_it_checks_its_file(swarm, torrent_factory):
    """A node accepts peers before its file is checked (a seeder is the only source at start), and
    a peer that came early hears of every piece as the check finds it."""
    t = torrent_factory(300_000, 4096, seed=5)
    info = parse_file_info(t.conf()["FileInfo"])
    node = swarm.start(0, t.conf([]), data=t.data)
    assert node.swarm.listening and node.state.have_count == 0  # the check has not run yet
    assert announced(swarm.ip(0), swarm.port, info, swarm.ip(1)) == (1 << info.n_pieces) - 1


class LyingPeer:
    """Claims every piece, answers every request with garbage of the right length (or, given
    `data`, with the right bytes except the first piece of each answer)."""

    def __init__(self, ip, port, info, data=None):
        self.info, self.requests, self.data = info, 0, data
        self.server = StreamServer((ip, port), self._handle)
        self.server.start()

    def _handle(self, sock, _):
        ses = Session(wire.Hello(os.urandom(8), self.server.server_port, self.info.meta_id), self.info)
        sock.sendall(ses.greeting)
        sock.sendall(b"".join(ses.announce(self.info.n_pieces and (1 << self.info.n_pieces) - 1, True)))
        try:
            while data := sock.recv(65536):
                for msg in ses.feed(data):
                    if isinstance(msg, wire.Request):
                        ses.answered()
                        self.requests += 1
                        offset, nbytes = self.info.span(msg.first, msg.count)
                        body = os.urandom(nbytes)
                        if self.data is not None:
                            bad = self.info.piece_len(msg.first)
                            body = body[:bad] + self.data[offset + bad:offset + nbytes]
                        sock.sendall(wire.encode(wire.Pieces(msg.first, msg.count, body)))
        except OSError:
            pass  # the node hung up on us: that is the point


def test_wrong_piece_data_is_discarded_and_refetched_elsewhere(swarm, torrent_factory):
    t = torrent_factory(64 * 1024, 1024, seed=11)
    liar = LyingPeer(swarm.ip(9), swarm.port, parse_file_info(t.conf()["FileInfo"]))
    try:
        node = swarm.start(1, t.conf(peers(swarm, 9)))
        assert swarm.wait(lambda: node.state.counters["pieces_bad"] > 0, 5)
        swarm.start(0, t.conf(peers(swarm, 1)), data=t.data)
        assert swarm.wait_complete()
        assert swarm.file_bytes(1) == t.data
        assert not any(c.ip == swarm.ip(9) for c in node.state.conns.values())
    finally:
        liar.server.stop()


def test_pieces_of_a_frame_are_verified_one_by_one_across_chunks(swarm, torrent_factory, monkeypatch):
    """A frame spans several chunks (hashed and written separately); one bad piece in it costs
    that piece only, and the chunk buffers are bounded and accounted for when a link dies."""
    from node import storage
    monkeypatch.setattr(storage, "CHUNK_BYTES", 4 * 1024)  # 4 pieces per chunk
    t = torrent_factory(256 * 1024, 1024, seed=12)
    liar = LyingPeer(swarm.ip(9), swarm.port, parse_file_info(t.conf()["FileInfo"]), data=t.data)
    try:
        node = swarm.start(1, t.conf(peers(swarm, 9)))
        assert swarm.wait(lambda: node.state.counters["pieces_bad"] > 0, 5)
        # At once, though 8 chunks were in flight: the closing reader must not wait for slots
        # that only the (ended) verifier would give back; it took until the request deadline.
        assert swarm.wait(lambda: liar.requests >= 1 and not node.state.requested, 2)
        # Every answer's first piece was wrong, the rest right: the rest is kept.
        assert node.state.counters["pieces_in"] >= node.state.counters["pieces_bad"] * 3
        # The liar is banned with chunks in flight: their slots come back, no more buffers exist.
        assert swarm.wait(lambda: node.storage._slots.counter == storage.CHUNKS_IN_FLIGHT, 5)
        assert len(node.storage._spare) <= storage.CHUNKS_IN_FLIGHT
        assert all(len(b) == 4 * 1024 for b in node.storage._spare)
        swarm.start(0, t.conf(peers(swarm, 1)), data=t.data)
        assert swarm.wait_complete()
        assert swarm.file_bytes(1) == t.data
    finally:
        liar.server.stop()


def test_sigterm_stops_the_process_promptly(tmp_path, torrent_factory):
    t = torrent_factory(1000, 100)
    conf = tmp_path / "c.json"
    conf.write_text(__import__("json").dumps(t.conf([])))
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "--data", str(tmp_path / "d.bin"), "--conf", str(conf),
         "--bind", "127.0.0.99", "--port", str(LocalSwarm(tmp_path).port), "--discovery", "off"],
        cwd=SOLUTION, stdout=subprocess.PIPE, text=True)
    try:
        assert "event=listening" in proc.stdout.readline()
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.terminate()
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 1.0
        out = proc.stdout.read()
        for event in ("event=signal", "event=listener_closed", "event=storage_closed", "event=stopped"):
            assert event in out
    finally:
        proc.kill()
        proc.wait()


def test_an_announce_is_learned_and_ends_probe_sweeps(swarm, torrent_factory):
    from gevent import socket
    from node import beacon
    t = torrent_factory(1000, 100)
    node = swarm.start(0, t.conf([]), data=t.data, discovery=True)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.60", swarm.port))
    try:
        udp.sendto(beacon.encode(beacon.ANNOUNCE, os.urandom(8), swarm.port), (swarm.ip(0), swarm.port))
        assert swarm.wait(lambda: ("127.0.0.60", swarm.port) in node.state.peers, 3)
        assert node.discovery.broadcast_works
        udp.sendto(beacon.encode(beacon.PROBE, os.urandom(8), swarm.port), (swarm.ip(0), swarm.port))
        udp.settimeout(3)
        while True:  # our probe is answered with a REPLY
            got = beacon.decode(udp.recvfrom(64)[0])
            if got.kind == beacon.REPLY:
                break
        assert got.instance == node.state.node_id
    finally:
        udp.close()


def test_only_a_node_without_links_sweeps(swarm, torrent_factory):
    """No broadcast on loopback, so an unlinked node sweeps 127.0.0.0/24 with PROBEs. Linked
    nodes must not: at 60 containers, their probes overflowed the host's shared ARP table."""
    from gevent import socket
    from node import beacon
    t = torrent_factory(1000, 100)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.5", swarm.port))  # swept before the nodes' .10-.12 (in address order)
    listener.settimeout(0.1)
    try:
        # Nobody knows the file, so no link ends "complete"; 0-1 stays up for USELESS_CLOSE_S.
        linked = [swarm.start(0, t.conf([swarm.ip(1)], file_info=False), discovery=True),
                  swarm.start(1, t.conf([swarm.ip(0)], file_info=False), discovery=True)]
        assert swarm.wait(lambda: all(n.state.conns for n in linked), 2)
        alone = swarm.start(2, t.conf([], file_info=False), discovery=True)
        probers = set()
        deadline = time.monotonic() + 3.5  # well past FIRST_SWEEP_DELAY_S, even on a busy machine
        while time.monotonic() < deadline:
            still_linked = all(n.state.conns for n in linked)  # ends "useless" after 3-4 s
            try:
                got = beacon.decode(listener.recvfrom(64)[0])
            except socket.timeout:
                continue
            if got.kind == beacon.PROBE and (got.instance == alone.state.node_id or still_linked):
                probers.add(got.instance)
        assert alone.state.node_id in probers
        assert not probers & {n.state.node_id for n in linked}  # none probed while it had a link
    finally:
        listener.close()


def test_metadata_learned_after_the_handshake_still_spreads_on_the_same_link(swarm, torrent_factory):
    """1 and 2 connect while neither knows the file; 1 learns it afterwards, and 2 gets it from 1
    over their existing link at once, not after the link is closed as useless and redialled."""
    t = torrent_factory(100_000, 1000, seed=12)
    node2 = swarm.start(2, t.conf([swarm.ip(1)], file_info=False))
    node1 = swarm.start(1, t.conf([swarm.ip(2)], file_info=False))
    assert swarm.wait(lambda: node1.state.conns and node2.state.conns, 3)
    (link,) = node2.state.conns.values()
    node1.learn_meta(parse_file_info(t.conf()["FileInfo"]), "test")
    assert swarm.wait(lambda: node2.state.info is not None, 1.5)
    assert list(node2.state.conns.values()) == [link]  # the same link carried it


def test_start_up_loads_no_plugin_machinery(tmp_path, torrent_factory):
    """Start-up cost matters at 60 nodes on 2 cores: a node that listens has loaded no entry-point
    scan (Debian's gevent.events loads pkg_resources), no ssl, no gevent thread pool or pprint
    (dataclasses, inspect, ast: 14 ms between them), no zope.interface, no gevent.lock (it loads
    gevent.monkey, and that inspect), and patched nothing."""
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps(torrent_factory(1000, 100).conf([])))
    heavy = ("ssl", "pkg_resources", "importlib.metadata", "gevent.events", "gevent.threadpool", "pprint",
             "dataclasses", "zope.interface.interface", "gevent.lock", "gevent.monkey", "inspect")
    code = ("import os, sys, socket; from node import log; from node.__main__ import main; emit = log.emit\n"
            "def at_listening(level, event, **fields):\n"
            "    if event == 'listening':\n"
            "        import gevent.socket\n"
            f"        print(sorted(m for m in {heavy!r} if m in sys.modules), "
            "socket.socket is gevent.socket.socket, flush=True); os._exit(0)\n"
            "    emit(level, event, **fields)\n"
            "log.emit = at_listening; main(sys.argv[1:])")
    argv = ["--conf", str(conf), "--data", str(tmp_path / "d.bin"), "--bind", "127.0.0.78",
            "--port", str(LocalSwarm(tmp_path).port), "--discovery", "off", "--log-level", "error"]
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=SOLUTION, capture_output=True, text=True,
                         timeout=30, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert [line for line in out.stdout.splitlines() if line.startswith("[")] == ["[] False"]
