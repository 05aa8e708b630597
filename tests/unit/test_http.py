"""node.http: /livez, /readyz and Prometheus /metrics of real nodes on 127.0.0.x (discovery off),
as a kubelet and a Prometheus server would see them; and no HTTP cost without --http-port."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import gevent
import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.config import parse_file_info

from swarmkit import LocalSwarm
from test_swarm_local import LyingPeer  # a peer whose pieces fail their hash

SOLUTION = os.path.join(os.path.dirname(__file__), "..", "..", "solution")
HTTP_TIMEOUT_S = 5.0


@pytest.fixture
def swarm(tmp_path):
    s = LocalSwarm(tmp_path)
    yield s
    s.stop_all()


def http_argv(swarm):
    return ("--http-port", str(swarm.port + 1))


def get(swarm, i, path):
    """(status code, body) of GET http://127.0.0.x:PORT+1/path, from a thread (blocking urllib)."""
    url = f"http://{swarm.ip(i)}:{swarm.port + 1}{path}"

    def fetch():
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
    return gevent.get_hub().threadpool.apply(fetch)


def scrape(swarm, i):
    """/metrics parsed by Prometheus' own parser -> {(sample name, labels): value}."""
    code, text = get(swarm, i, "/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def state_of(metrics):
    on = [dict(labels)["state"] for (name, labels), v in metrics.items() if name == "p2p_node_state" and v == 1]
    assert len(on) == 1, on
    return on[0]


def test_probes_follow_metadata_then_completion(swarm, torrent_factory):
    t = torrent_factory(200_000, 4096, seed=21)
    leecher = swarm.start(1, t.conf([swarm.ip(0)], file_info=False), argv=http_argv(swarm))
    assert get(swarm, 1, "/livez")[0] == 200
    code, body = get(swarm, 1, "/readyz")
    assert (code, body) == (503, "not ready: metadata unknown\n")
    m = scrape(swarm, 1)
    assert state_of(m) == "metadata"
    assert m[("p2p_node_pieces", ())] == 0 and m[("p2p_node_ready", ())] == 0

    swarm.start(0, t.conf([swarm.ip(1)]), data=t.data, argv=http_argv(swarm))
    assert swarm.wait_complete(timeout=15)
    assert get(swarm, 1, "/readyz") == (200, "ready\n")
    assert get(swarm, 1, "/readyz?complete=1") == (200, "ready\n")
    m = scrape(swarm, 1)
    n = len(t.parts)
    assert state_of(m) == "complete"
    assert m[("p2p_node_pieces_held", ())] == m[("p2p_node_pieces", ())] == n
    assert m[("p2p_node_file_bytes", ())] == t.size
    assert m[("p2p_node_received_bytes_total", ())] >= t.size
    assert m[("p2p_node_pieces_received_total", ())] == n
    assert m[("p2p_node_dials_total", ())] >= 1  # it dialled the seeder from its Peers
    assert m[("p2p_node_uptime_seconds", ())] > 0
    assert m[("p2p_node_info", (("node_id", leecher.state.node_id.hex()), ("version", "0.1.0")))] == 1
    seeder = scrape(swarm, 0)
    assert seeder[("p2p_node_sent_bytes_total", ())] >= t.size  # the seeder sent it all
    assert seeder[("p2p_node_pieces_received_total", ())] == 0


def test_readyz_complete_waits_for_every_piece(swarm, torrent_factory):
    t = torrent_factory(100_000, 4096, seed=22)
    swarm.start(1, t.conf([]), argv=http_argv(swarm))  # metadata known, no file, nobody to ask
    assert get(swarm, 1, "/readyz") == (200, "ready\n")
    code, body = get(swarm, 1, "/readyz?complete=1")
    assert code == 503 and body.startswith("not ready: not complete (0/25 pieces)")
    assert state_of(scrape(swarm, 1)) == "fetching"


def test_bad_pieces_and_bans_are_counted(swarm, torrent_factory):
    t = torrent_factory(64 * 1024, 1024, seed=23)
    liar = LyingPeer(swarm.ip(9), swarm.port, parse_file_info(t.conf()["FileInfo"]))
    try:
        node = swarm.start(1, t.conf([swarm.ip(9)]), argv=http_argv(swarm))
        assert swarm.wait(lambda: node.state.counters["bans"] > 0, 5)
        m = scrape(swarm, 1)
        assert m[("p2p_node_pieces_failed_verification_total", ())] >= 3
        assert m[("p2p_node_bans_total", ())] == 1
    finally:
        liar.server.stop()


def test_unknown_path_and_method(swarm, torrent_factory):
    t = torrent_factory(1000, 100)
    swarm.start(0, t.conf([]), data=t.data, argv=http_argv(swarm))
    assert get(swarm, 0, "/nope")[0] == 404
    req = urllib.request.Request(f"http://{swarm.ip(0)}:{swarm.port + 1}/livez", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as e:
        gevent.get_hub().threadpool.apply(urllib.request.urlopen, (req,), {"timeout": HTTP_TIMEOUT_S})
    assert e.value.code == 405


def test_http_port_is_released_at_stop(swarm, torrent_factory):
    t = torrent_factory(1000, 100)
    swarm.start(0, t.conf([]), data=t.data, argv=http_argv(swarm))
    swarm.stop(0)
    swarm.start(0, t.conf([]), data=t.data, argv=http_argv(swarm))  # binds the same port again
    assert get(swarm, 0, "/livez")[0] == 200


def test_livez_fails_once_the_node_is_stopping(swarm, torrent_factory):
    t = torrent_factory(1000, 100)
    node = swarm.start(0, t.conf([]), data=t.data, argv=http_argv(swarm))
    node.stopping.set()
    assert get(swarm, 0, "/livez") == (503, "stopping\n")
    assert get(swarm, 0, "/readyz")[0] == 503


def _imports_after_start(tmp_path, torrent_factory, extra):
    """Start a real node in a fresh interpreter; which HTTP modules did it import?"""
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps(torrent_factory(1000, 100).conf([])))
    code = ("import sys; "
            "from node import config, main; "
            f"n = main.Node(config.load(sys.argv[1:], {{}})); n.start(); "
            "print(sorted(m for m in ('prometheus_client', 'gevent.pywsgi') if m in sys.modules)); "
            "n.stop()")
    argv = ["--conf", str(conf), "--data", str(tmp_path / "d.bin"), "--bind", "127.0.0.77",
            "--port", str(LocalSwarm(tmp_path).port), "--discovery", "off", "--log-level", "error", *extra]
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=SOLUTION, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.startswith("[")][0]


def test_no_http_imports_without_the_flag(tmp_path, torrent_factory):
    assert _imports_after_start(tmp_path, torrent_factory, []) == "[]"
    port = str(LocalSwarm(tmp_path).port + 1)
    assert _imports_after_start(tmp_path, torrent_factory, ["--http-port", port]) == \
        "['gevent.pywsgi', 'prometheus_client']"


def test_a_silent_client_is_disconnected(swarm, torrent_factory, monkeypatch):
    """Connections are few (MAX_HTTP_CONNS): one that sends nothing must not hold its slot."""
    from gevent import socket

    from node import http
    monkeypatch.setattr(http, "CONN_TIMEOUT_S", 0.3)
    t = torrent_factory(1000, 100)
    swarm.start(0, t.conf([]), data=t.data, argv=http_argv(swarm))
    sock = socket.create_connection((swarm.ip(0), swarm.port + 1), timeout=3)
    try:
        assert sock.recv(1) == b""  # closed by the node, well before our own 3 s timeout
    finally:
        sock.close()
    assert get(swarm, 0, "/livez")[0] == 200
