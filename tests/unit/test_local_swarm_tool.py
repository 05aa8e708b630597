"""tools/local_swarm.py turns the nodes' log lines into the live table: parsing and bookkeeping."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
local_swarm = pytest.importorskip("local_swarm")

from node import log  # noqa: E402


def line(event, now, **fields):
    return log.format_line("info", event, fields, now=now)


def test_logfmt_round_trip_with_quoted_values():
    text = line("peer_closed", 0, peer="10.0.0.2", why='send failed: "x" y=1')
    got = local_swarm.parse_logfmt(text)
    assert got["event"] == "peer_closed" and got["peer"] == "10.0.0.2"
    assert got["why"].startswith("send failed:")


def test_timestamps_parse_back_to_the_epoch_seconds():
    got = local_swarm.parse_logfmt(line("x", 1_700_000_000.25))
    assert local_swarm.parse_ts(got["ts"]) == pytest.approx(1_700_000_000.25, abs=0.001)


def test_watch_tracks_progress_and_completion_per_node():
    w = local_swarm.SwarmWatch()
    feed = lambda name, text: w.feed(name, local_swarm.parse_logfmt(text))  # noqa: E731
    feed("p2pswarm-node-1", line("listening", 99.5, addr="0.0.0.0:6881"))
    feed("p2pswarm-node-1", line("file_info", 100.0, size=1000, pieces=10, result="known"))
    feed("p2pswarm-node-1", line("scan_done", 100.1, have=2, pieces=10))
    feed("p2pswarm-node-1", line("progress", 101.0, have="6/10", rate_mbs=12.5, bytes_in=400, bytes_out=7,
                                 peers=3))
    feed("p2pswarm-node-1", line("not_tracked", 101.5, x=1))
    rows = local_swarm.watch_rows(w.snapshot(), 100.0)
    n = rows["p2pswarm-node-1"]
    assert (n["have"], n["pieces"], n["bytes_in"], n["peers"], n["done"]) == (6, 10, 400, 3, None)
    assert n["rate"] == 12.5
    feed("p2pswarm-node-1", line("complete", 102.5, pieces=10, bytes=1000, bytes_in=800))
    n = local_swarm.watch_rows(w.snapshot(), 100.0)["p2pswarm-node-1"]
    assert n["have"] == 10 and n["done"] == pytest.approx(2.5, abs=0.01)
    assert [h for _, h in n["history"]] == [0, 2, 6, 10]
    assert local_swarm.first_start(w.snapshot(), 0) == pytest.approx(99.5, abs=0.01)


@pytest.mark.parametrize("text,want", [("64M", 64 << 20), ("256K", 256 << 10), ("1G", 1 << 30),
                                       ("1000", 1000), ("1MiB", 1 << 20), ("1.5M", 3 << 19)])
def test_sizes_read_like_an_operator_writes_them(text, want):
    assert local_swarm.parse_size(text) == want


def _text(table):
    from rich.console import Console
    console = Console(record=True, width=120)
    console.print(table)
    return console.export_text()


def test_the_two_tables_name_their_clock_differently():
    """`make local-swarm`'s table counts from the first node's start, `make status` from each
    node's own start: the same header for both misled a user."""
    row = {"n-1": {"have": 4, "pieces": 4, "bytes_in": 0, "bytes_out": 0, "peers": 1, "rate": 0.0,
                   "done": 2.5}}
    run = _text(local_swarm.render(row, "caption"))
    status = _text(local_swarm.render(row, done=local_swarm.TOOK))
    assert "done at" in run and "first node's start" in run and "took" not in run
    assert "took" in status and "own start" in status and "done at" not in status
    assert "2.50s" in run and "2.50s" in status
