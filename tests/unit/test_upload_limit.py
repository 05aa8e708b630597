"""Uploads: --max-upload-rate holds for all peers together; the node's upload slots serve a few
requests at a time, reject one that waits too long or finds the queue full, and a seeder whose
uplink is the limit sends each piece once before any twice."""

import contextlib
import os
import time

import gevent
import pytest
from gevent import socket

from node import config, hub, wire
from node.budget import UploadPace
from node.config import ConfigError

from swarmkit import LocalSwarm, decode_frames


def test_pace_books_consecutive_slots():
    pace = UploadPace(1000)  # bytes/s
    assert pace.delay(500, now=10.0) == 0.0  # idle: at once
    assert pace.delay(500, now=10.0) == pytest.approx(0.5)  # after the first half second
    assert pace.delay(1000, now=10.2) == pytest.approx(0.8)  # two links share one schedule
    assert pace.delay(100, now=20.0) == 0.0  # idle again: no credit saved up either


@pytest.mark.parametrize("text,rate", [("0", 0), ("off", 0), ("", 0), ("2048", 2048), ("500K", 500 << 10),
                                       ("20M", 20 << 20), ("1.5M", 3 << 19), ("1G", 1 << 30), ("20MiB/s", 20 << 20)])
def test_rates_parse(text, rate):
    assert config.parse_rate(text, "max-upload-rate") == rate


@pytest.mark.parametrize("text", ["fast", "-5M", "M", "nanK", "inf"])
def test_bad_rates_name_the_flag(text):
    with pytest.raises(ConfigError) as e:
        config.parse_rate(text, "max-upload-rate")
    assert e.value.field == "max-upload-rate"


def test_a_seeder_uploads_no_faster_than_its_limit(tmp_path, torrent_factory):
    """Two leechers fetch 2 MiB each from a seeder limited to 1 MiB/s: about 4 s, never much less."""
    rate = 1 << 20
    t = torrent_factory(2 << 20, 64 << 10, seed=31)
    swarm = LocalSwarm(tmp_path)
    try:
        swarm.start(0, t.conf([]), data=t.data, argv=("--max-upload-rate", "1M"))
        assert swarm.wait_complete()
        t0 = time.monotonic()
        for i in (1, 2):  # they may not trade with each other: no peers but the seeder, no discovery
            swarm.start(i, t.conf([swarm.ip(0)]))
        assert swarm.wait_complete(timeout=20)
        took = time.monotonic() - t0
        sent = swarm.nodes[0].state.counters["bytes_out"]
        print(f"seeder sent {sent} B in {took:.2f} s: {sent / took / rate:.2f} x the limit")
        # Every piece left the seeder at least once, however much the leechers then traded between
        # them (they learn each other by PEX; its share was 52-94% of the bytes, too close to 50%
        # for the "most of the sending" check this replaced).
        assert sent >= len(t.data)
        assert sent / took <= rate * 1.10
        assert swarm.file_bytes(1) == swarm.file_bytes(2) == t.data
    finally:
        swarm.stop_all()


def _raw_peer(swarm, info):
    """A raw peer linked to node 0, with no pieces; returns its socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.60", 0))
    sock.connect((swarm.ip(0), swarm.port))
    sock.sendall(wire.encode(wire.Hello(os.urandom(8), 0, info.meta_id)))
    return sock


def _answers(sock, n, within=8.0):
    """The first n PIECES or REJECT frames from the node, as (kind, first)."""
    buf, got = bytearray(), []
    sock.settimeout(within)
    deadline = time.monotonic() + within
    while len(got) < n and time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            break
        if not data:
            break
        buf += data
        got += [(type(m).__name__, m.first) for m in decode_frames(buf) if isinstance(m, (wire.Pieces, wire.Reject))]
    return got


@contextlib.contextmanager
def one_slot_seeder(tmp_path, torrent_factory, monkeypatch, wait_s, size, rate, first_asks):
    """A seeder with one upload slot, busy serving a first raw peer its request `first_asks`
    (first, count), read in the background; yields (a second raw peer, the first one's answers,
    a function that links one more raw peer)."""
    monkeypatch.setattr(hub, "UPLOAD_SLOTS", 1)
    monkeypatch.setattr(hub, "UPLOAD_WAIT_S", wait_s)
    t = torrent_factory(size, 256 << 10, seed=32)
    info = config.parse_file_info(t.conf()["FileInfo"])
    swarm = LocalSwarm(tmp_path)
    try:
        swarm.start(0, t.conf([]), data=t.data, argv=("--max-upload-rate", rate))
        assert swarm.wait_complete()
        first, second = _raw_peer(swarm, info), _raw_peer(swarm, info)
        first.sendall(wire.encode(wire.Request(*first_asks)))
        first_got = gevent.spawn(_answers, first, 1)
        gevent.sleep(0.2)
        socks = [first, second]

        def new_peer():
            socks.append(_raw_peer(swarm, info))
            return socks[-1]

        yield second, first_got, new_peer
        for sock in socks:
            sock.close()
    finally:
        swarm.stop_all()


def test_a_request_that_waits_too_long_for_an_upload_slot_is_rejected(tmp_path, torrent_factory, monkeypatch):
    """The seeder serves UPLOAD_SLOTS requests at once; one that cannot start within UPLOAD_WAIT_S
    is rejected, so its peer asks someone less busy instead of waiting on a queue."""
    # 1 MiB at 256 KiB/s: the slot is busy 4 s
    seeder = one_slot_seeder(tmp_path, torrent_factory, monkeypatch, 0.5, 1 << 20, "256K", (0, 4))
    with seeder as (peer, first, _):
        peer.sendall(wire.encode(wire.Request(0, 1)))
        assert _answers(peer, 1, within=3.0) == [("Reject", 0)]
        assert first.get() == [("Pieces", 0)]


def test_a_request_beyond_the_upload_queue_is_rejected_at_once(tmp_path, torrent_factory, monkeypatch):
    """With every slot busy and UPLOAD_QUEUE requests waiting, one more is refused at once, not
    after UPLOAD_WAIT_S: its peer asks another holder; the one that waits is served in turn."""
    monkeypatch.setattr(hub, "UPLOAD_QUEUE", 1)
    # 1 MiB at 256 KiB/s: the slot is busy 4 s, far less than the 10 s a request may wait
    seeder = one_slot_seeder(tmp_path, torrent_factory, monkeypatch, 10.0, 1 << 20, "256K", (0, 4))
    with seeder as (peer, first, _):
        peer.sendall(wire.encode(wire.Request(0, 1)) + wire.encode(wire.Request(1, 1)))
        assert _answers(peer, 1, within=2.0) == [("Reject", 1)]
        assert first.get() == [("Pieces", 0)]
        assert _answers(peer, 1) == [("Pieces", 0)]


def test_a_link_that_goes_while_its_request_waits_gives_its_place_back(tmp_path, torrent_factory, monkeypatch):
    """A request waiting for a slot on a link that then closes no longer counts against
    UPLOAD_QUEUE: the next peer's request waits its turn and is served, not refused."""
    monkeypatch.setattr(hub, "UPLOAD_QUEUE", 1)
    # 1 MiB at 256 KiB/s: the slot is busy 4 s
    seeder = one_slot_seeder(tmp_path, torrent_factory, monkeypatch, 10.0, 1 << 20, "256K", (0, 4))
    with seeder as (peer, first, new_peer):
        peer.sendall(wire.encode(wire.Request(0, 1)))  # the one place in the queue
        gevent.sleep(0.3)
        peer.close()  # EOF: the seeder ends that link at once
        gevent.sleep(0.3)
        late = new_peer()
        late.sendall(wire.encode(wire.Request(1, 1)))
        assert first.get() == [("Pieces", 0)]
        assert _answers(late, 1) == [("Pieces", 1)]


def test_a_seeder_whose_uplink_is_the_limit_sends_each_piece_once_first(tmp_path, torrent_factory, monkeypatch):
    """A request that queued for an upload slot, for a piece the seeder already sent while it has
    pieces it never sent, is refused (the peer gets it from whoever got it); a new one is served."""
    # 512 KiB at 512 KiB/s: the slot is busy 1 s
    seeder = one_slot_seeder(tmp_path, torrent_factory, monkeypatch, 10.0, 2 << 20, "512K", (0, 2))
    with seeder as (peer, first, _):
        peer.sendall(wire.encode(wire.Request(0, 1)) + wire.encode(wire.Request(2, 1)))
        assert sorted(_answers(peer, 2)) == [("Pieces", 2), ("Reject", 0)]  # replies in any order
        assert first.get() == [("Pieces", 0)]


def test_a_frame_for_the_peer_waits_behind_one_reply_at_most(tmp_path, torrent_factory):
    """Replies and the link's other frames take turns on the socket: a frame queued while replies
    are due goes out after the reply being sent, not after all of them. On a slow uplink each
    reply takes a second or more, and the HAVEs and REQUESTs behind them would be that late."""
    t = torrent_factory(1 << 20, 256 << 10, seed=33)
    info = config.parse_file_info(t.conf()["FileInfo"])
    swarm = LocalSwarm(tmp_path)
    try:
        swarm.start(0, t.conf([]), data=t.data, argv=("--max-upload-rate", "1M"))  # a piece: 0.25 s
        assert swarm.wait_complete()
        peer = _raw_peer(swarm, info)
        peer.sendall(b"".join(wire.encode(wire.Request(i, 1)) for i in range(4)))
        gevent.sleep(0.1)  # the first reply is on its way, three wait
        peer.sendall(wire.encode(wire.StatusRequest()))
        buf, kinds = bytearray(), []
        peer.settimeout(8.0)
        while kinds.count("Pieces") < 4 and (data := peer.recv(1 << 16)):
            buf += data
            kinds += [type(m).__name__ for m in decode_frames(buf) if isinstance(m, (wire.Pieces, wire.Status))]
        assert "Status" in kinds[:3], kinds  # after the reply in progress (or the next), not after all four
        peer.close()
    finally:
        swarm.stop_all()
