"""--max-upload-rate: a node's piece data goes out no faster than the limit, all peers together."""

import time

import pytest

from node import config
from node.budget import UploadPace
from node.config import ConfigError

from swarmkit import LocalSwarm


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
