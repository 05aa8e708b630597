"""Mutual TLS: members (certificates from the swarm's CA) sync; anyone else gets nothing from them,
not even the HELLO that names the file, and the refusal is logged; status needs a certificate too."""

import os
import subprocess

import gevent
import pytest
from gevent import socket

from node import config, status, wire
from node.config import ConfigError, parse_file_info
from node.main import Node

from swarmkit import LocalSwarm

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def make_certs(path, nodes):
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "certs.sh"), str(path), str(nodes)], check=True,
                   capture_output=True)
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("ca"), 3)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("other-ca"), 1)


def tls_flags(d, name):
    return ("--tls-cert", str(d / f"{name}.pem"), "--tls-key", str(d / f"{name}.key"), "--tls-ca", str(d / "ca.pem"))


@pytest.fixture
def swarm(tmp_path):
    s = LocalSwarm(tmp_path)
    yield s
    s.stop_all()


def test_members_sync_over_tls(swarm, torrent_factory, certs):
    t = torrent_factory(300_000, 4096, seed=21)
    swarm.start(0, t.conf([]), data=t.data, argv=tls_flags(certs, "node-0"))
    swarm.start(1, t.conf([swarm.ip(0)], file_info=False), argv=tls_flags(certs, "node-1"))
    swarm.start(2, t.conf([swarm.ip(1)]), argv=tls_flags(certs, "member"))
    assert swarm.wait_complete(timeout=10)
    assert swarm.file_bytes(1) == swarm.file_bytes(2) == t.data


def test_an_outsider_without_a_certificate_learns_nothing(swarm, torrent_factory, certs, capsys):
    t = torrent_factory(50_000, 1000, seed=22)
    member = swarm.start(0, t.conf([]), data=t.data, argv=tls_flags(certs, "node-0"))
    meta_id = parse_file_info(t.conf()["FileInfo"]).meta_id
    sock = socket.socket()
    sock.bind(("127.0.0.51", 0))
    sock.connect((swarm.ip(0), swarm.port))
    sock.sendall(wire.encode(wire.Hello(os.urandom(8), 7000)))
    got = b""
    sock.settimeout(2.0)
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except OSError:
        pass
    sock.close()
    assert b"P2PS" not in got and meta_id not in got
    # an open node that lists the member as a peer never learns the file, nor does the member link to it
    outsider = swarm.start(1, t.conf([swarm.ip(0)], file_info=False))
    gevent.sleep(2.0)
    assert outsider.state.info is None and not member.state.conns and not outsider.state.conns
    out = capsys.readouterr().out
    assert out.count("event=peer_refused peer=127.0.0.51 ") == 1  # once, however often it tries
    assert "event=peer_refused peer=127.0.0.11 " in out


def test_a_certificate_from_another_ca_is_refused_both_ways(swarm, torrent_factory, certs, other_ca):
    t = torrent_factory(50_000, 1000, seed=23)
    member = swarm.start(0, t.conf([]), data=t.data, argv=tls_flags(certs, "node-0"))
    stranger = swarm.start(1, t.conf([swarm.ip(0)], file_info=False), argv=tls_flags(other_ca, "node-0"))
    swarm.start(2, t.conf([swarm.ip(1)]), data=t.data, argv=tls_flags(certs, "node-1"))  # dials the stranger
    gevent.sleep(2.0)
    assert stranger.state.info is None and not stranger.state.conns
    assert all(c.ip != swarm.ip(1) for c in member.state.conns.values())


def test_status_needs_a_members_certificate(swarm, torrent_factory, certs, other_ca):
    t = torrent_factory(10_000, 1000, seed=24)
    swarm.start(0, t.conf([]), data=t.data, argv=tls_flags(certs, "node-0"))
    assert swarm.wait_complete()
    pool = gevent.get_hub().threadpool
    member = tuple(str(certs / f) for f in ("member.pem", "member.key", "ca.pem"))
    st = pool.apply(status.fetch, (swarm.ip(0), swarm.port), {"tls": member})
    assert st["complete"] is True
    with pytest.raises(OSError):
        pool.apply(status.fetch, (swarm.ip(0), swarm.port), {"timeout": 2.0})
    stranger = tuple(str(other_ca / f) for f in ("node-0.pem", "node-0.key", "ca.pem"))
    with pytest.raises(OSError):
        pool.apply(status.fetch, (swarm.ip(0), swarm.port), {"tls": stranger, "timeout": 2.0})


@pytest.mark.parametrize("missing", ["--tls-cert", "--tls-key", "--tls-ca"])
def test_tls_flags_come_all_three_or_none(tmp_path, certs, missing):
    conf = tmp_path / "torrent.conf"
    conf.write_text("{}")
    flags = list(tls_flags(certs, "node-0"))
    i = flags.index(missing)
    del flags[i:i + 2]
    with pytest.raises(ConfigError) as e:
        config.load(["--conf", str(conf), *flags], {})
    assert e.value.field == missing[2:]


def test_a_certificate_that_does_not_load_names_its_flag(tmp_path, certs):
    conf = tmp_path / "torrent.conf"
    conf.write_text("{}")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    flags = ["--tls-cert", str(bad), "--tls-key", str(certs / "node-0.key"), "--tls-ca", str(certs / "ca.pem")]
    with pytest.raises(ConfigError) as e:
        Node(config.load(["--conf", str(conf), "--bind", "127.0.0.9", *flags], {}))
    assert e.value.field == "tls-cert"


def test_tls_flags_from_the_environment(tmp_path, certs):
    conf = tmp_path / "torrent.conf"
    conf.write_text("{}")
    env = {"NODE_TLS_CERT": str(certs / "member.pem"), "NODE_TLS_KEY": str(certs / "member.key"),
           "NODE_TLS_CA": str(certs / "ca.pem")}
    assert config.load(["--conf", str(conf)], env).tls


def _link_pair(certs):
    from types import SimpleNamespace
    from node import tls
    gate = tls.Gate(SimpleNamespace(tls_cert=str(certs / "member.pem"), tls_key=str(certs / "member.key"),
                                    tls_ca=str(certs / "ca.pem")))
    a, b = socket.socketpair()
    server = gevent.spawn(gate.wrap, a, True, "127.0.0.1")
    client = gate.wrap(b, False, "127.0.0.1")
    return server.get(timeout=5), client


def test_a_link_moves_both_ways_at_once_in_order(certs):
    """Both ends send more than the socket buffers hold while reading, through one shared
    receive buffer per node; every byte arrives in order, and a close reads as 0."""
    server, client = _link_pair(certs)
    size = 3 << 20
    data = {server: os.urandom(size), client: os.urandom(size)}

    def receive(link):
        got, view = bytearray(size), memoryview(bytearray(1 << 20))
        n = 0
        while n < size:
            k = link.recv_into(view[:min(len(view), size - n)])
            assert k
            got[n:n + k] = view[:k]
            n += k
        return bytes(got)

    def send(link):
        for at in range(0, size, 100_000):  # odd slices: records and sends do not line up
            link.sendall(data[link][at:at + 100_000])

    jobs = [gevent.spawn(f, link) for link in (server, client) for f in (send, receive)]
    gevent.joinall(jobs, timeout=20, raise_error=True)
    assert jobs[1].value == data[client] and jobs[3].value == data[server]
    client.close()
    assert server.recv_into(memoryview(bytearray(16))) == 0
    server.close()
