"""Hostile or broken peers cost only their own connection: the node keeps serving everyone else,
its memory stays bounded and its file is never corrupted."""

import os
import time

import gevent
import pytest
from gevent import socket
from gevent.server import StreamServer

from node import conn, wire
from node.config import parse_file_info
from node.peers import INBOUND_OVERFLOW, MAX_INBOUND, MAX_INBOUND_PER_IP

from swarmkit import LocalSwarm, decode_frames


@pytest.fixture
def swarm(tmp_path):
    s = LocalSwarm(tmp_path)
    yield s
    s.stop_all()


def raw_client(swarm, target, source_ip="127.0.0.50"):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source_ip, 0))
    sock.connect((swarm.ip(target), swarm.port))
    return sock


def hello(meta_id=wire.NO_META, port=0):
    return wire.encode(wire.Hello(os.urandom(8), port, meta_id))


def closed_by_node(sock, within=3.0):
    """True if the node hangs up on us within `within` seconds (we read until EOF)."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


BAD_FRAMES = {
    "unknown_kind": wire.HEADER.pack(1, 99),
    "zero_length": wire.HEADER.pack(0, 0),
    "oversize_have": wire.HEADER.pack(1 + 9, wire.HAVE) + bytes(9),
    "oversize_bitfield": wire.HEADER.pack(1 + (1 << 30), wire.BITFIELD),
    "second_hello": hello(),
    "unrequested_pieces": wire.pieces_header(0, 1, 10) + bytes(10),
    "unsolicited_meta": wire.encode(wire.Meta(10, 10, (bytes(20),))),
    "request_out_of_range": wire.encode(wire.Request(10_000, 5)),
    "garbage": b"\xff" * 64,
}


@pytest.mark.parametrize("frame", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_malformed_frame_closes_only_that_connection(swarm, torrent_factory, frame):
    t = torrent_factory(50_000, 1000, seed=1)
    seeder = swarm.start(0, t.conf([]), data=t.data)
    assert swarm.wait_complete()
    bad = raw_client(swarm, 0)
    bad.sendall(hello() + frame)
    assert closed_by_node(bad)
    bad.close()
    swarm.start(1, t.conf([swarm.ip(0)]))  # an honest peer is still served
    assert swarm.wait_complete()
    assert swarm.file_bytes(1) == t.data
    assert seeder.state.complete and swarm.file_bytes(0) == t.data


def test_silent_connection_is_dropped_after_the_handshake_timeout(swarm, torrent_factory):
    t = torrent_factory(10_000, 1000)
    swarm.start(0, t.conf([]), data=t.data)
    sock = raw_client(swarm, 0)
    assert not closed_by_node(sock, within=1.0)  # it waits a little for our hello...
    assert closed_by_node(sock, within=6.0)  # ...but not forever
    sock.close()


def test_connection_flood_from_one_address_does_not_starve_real_peers(swarm, torrent_factory):
    t = torrent_factory(200_000, 2000, seed=2)
    seeder = swarm.start(0, t.conf([]), data=t.data)
    flood = []
    for _ in range(60):
        try:
            flood.append(raw_client(swarm, 0))
        except OSError:
            break
    gevent.sleep(0.2)
    swarm.start(1, t.conf([swarm.ip(0)]))
    try:
        assert swarm.wait_complete(timeout=3.0)  # well before any flood socket times out
        assert swarm.file_bytes(1) == t.data
        assert len(seeder.swarm.in_pool) <= 32  # slots stay bounded
    finally:
        for s in flood:
            s.close()


def test_connects_past_the_inbound_bound_wait_in_the_backlog_until_a_place_frees(swarm, torrent_factory):
    t = torrent_factory(10_000, 1000, seed=3)
    seeder = swarm.start(0, t.conf([]), data=t.data)
    bound = MAX_INBOUND + INBOUND_OVERFLOW
    silent = [raw_client(swarm, 0, f"127.0.0.{60 + i // MAX_INBOUND_PER_IP}") for i in range(bound)]
    try:
        for s in silent:  # each accepted: the node greets at once, then waits for our hello
            s.settimeout(2.0)
            assert s.recv(1)
        late = raw_client(swarm, 0, "127.0.0.90")  # the kernel completes the connect...
        late.settimeout(0.5)
        with pytest.raises(socket.timeout):  # ...but the node does not take it while full
            late.recv(1)
        assert len(seeder.swarm.in_pool) == bound
        silent.pop().close()
        late.settimeout(2.0)
        assert late.recv(1)  # taken as soon as a place freed, long before any handshake timeout
        late.close()
    finally:
        for s in silent:
            s.close()


class Staller:
    """Says hello, claims every piece, then never answers a request."""

    def __init__(self, ip, port, info):
        self.info = info
        self.server = StreamServer((ip, port), self._handle)
        self.server.start()

    def _handle(self, sock, _):
        n = self.info.n_pieces
        sock.sendall(wire.encode(wire.Hello(os.urandom(8), self.server.server_port, self.info.meta_id))
                     + wire.encode(wire.Bitfield(((1 << n) - 1).to_bytes((n + 7) // 8, "little"))))
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass


def test_stalled_peer_costs_only_its_requests(swarm, torrent_factory):
    t = torrent_factory(64 * 1024, 1024, seed=3)
    staller = Staller(swarm.ip(9), swarm.port, parse_file_info(t.conf()["FileInfo"]))
    try:
        node = swarm.start(1, t.conf([swarm.ip(9)]))
        assert swarm.wait(lambda: node.state.requested, 3)  # it asked the staller for something
        swarm.start(0, t.conf([swarm.ip(1)]), data=t.data)
        assert swarm.wait_complete(timeout=12)
        assert swarm.file_bytes(1) == t.data
        assert swarm.wait(lambda: not any(c.ip == swarm.ip(9) for c in node.state.conns.values()), 8)
    finally:
        staller.server.stop()


def read_frames(sock, want, within=3.0):
    """Messages from the node until `want(msgs)` holds (or the time is up)."""
    buf, msgs = bytearray(), []
    sock.settimeout(within)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and not want(msgs):
        data = sock.recv(65536)
        if not data:
            break
        buf += data
        msgs.extend(decode_frames(buf))
    return msgs


@pytest.mark.parametrize("split", ["one_send", "byte_by_byte"])
def test_frames_are_read_however_the_bytes_arrive(swarm, torrent_factory, split):
    """Many frames in one segment, or one frame over many: the node reads each exactly once."""
    t = torrent_factory(8 * 1024, 1024, seed=4)
    info = parse_file_info(t.conf()["FileInfo"])
    swarm.start(0, t.conf([]), data=t.data)
    assert swarm.wait_complete()
    sock = raw_client(swarm, 0)
    frames = (hello(info.meta_id, port=0) + wire.encode(wire.Bitfield(b"\x00"))
              + b"".join(wire.encode(wire.Have(i, 1)) for i in range(3))
              + wire.encode(wire.Request(0, 2)) + wire.encode(wire.Request(5, 3)))
    if split == "one_send":
        sock.sendall(frames)
    else:
        for i in range(len(frames)):
            sock.sendall(frames[i:i + 1])
            gevent.sleep(0.001)
    msgs = read_frames(sock, lambda m: sum(isinstance(x, wire.Pieces) for x in m) == 2)
    pieces = {(m.first, m.count): m.data for m in msgs if isinstance(m, wire.Pieces)}
    assert pieces == {(0, 2): t.data[:2048], (5, 3): t.data[5 * 1024:8 * 1024]}
    sock.close()


def _ask_everything(swarm, info, rcvbuf=16 << 10):
    """A raw peer with a small receive buffer that asked the seeder for the whole file."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window stays small
    sock.bind(("127.0.0.50", 0))
    sock.connect((swarm.ip(0), swarm.port))
    sock.sendall(hello(info.meta_id) + wire.encode(wire.Request(0, info.n_pieces)))
    return sock


def test_a_slow_reader_keeps_its_link_and_one_that_stops_reading_loses_it(swarm, torrent_factory, monkeypatch):
    """A reply that takes longer than the stall limit (a capped uplink shared by many links) is
    no stall while the peer keeps taking bytes; a peer that takes none is dropped."""
    monkeypatch.setattr(conn, "SEND_STALL_S", 1.0)
    t = torrent_factory(16 << 20, 1 << 20, seed=5)
    info = parse_file_info(t.conf()["FileInfo"])
    node = swarm.start(0, t.conf([]), data=t.data)
    assert swarm.wait_complete()
    slow, stopped = _ask_everything(swarm, info), _ask_everything(swarm, info)
    got, t_end = 0, time.monotonic() + 3.5
    while time.monotonic() < t_end:  # ~160 KB/s: the 16 MiB reply would take 100 s
        data = slow.recv(16 << 10)
        assert data, "the node closed the link of a peer that was reading"
        got += len(data)
        gevent.sleep(0.1)
    assert 0 < got < len(t.data) // 2
    served = {c.sock.getpeername()[1] for c in node.swarm.clients if c.reason is None}
    assert served == {slow.getsockname()[1]}  # the slow reader's link lives, the other's ended
    assert closed_by_node(stopped, within=5.0)
    slow.close()
    stopped.close()
