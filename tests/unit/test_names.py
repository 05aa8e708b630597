"""names: peers by DNS name, with a resolver fake. Every A record becomes a peer (source "dns"),
own addresses skipped, a bounded random sample of a big answer, topped up as addresses fail;
failures logged once per change and never fatal; re-resolution finds replicas that start later.
The last test runs whole nodes over 127.0.0.x that know each other only by a name."""

import json
import random
import time
from types import SimpleNamespace

import gevent
import pytest

from node import config, log, names
from node.state import NodeState, Source

from swarmkit import LocalSwarm

PORT = 6881


class FakeResolver:
    """answers: name -> list of IPs, or an OSError to raise. Counts calls."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = 0

    def __call__(self, name, port):
        self.calls += 1
        a = self.answers.get(name, OSError(f"[Errno -2] Name or service not known: {name}"))
        if isinstance(a, Exception):
            raise a
        return list(a)


def fake_node(peer_names=(("tasks.p2p", PORT),), bind="10.0.1.5"):
    cfg = SimpleNamespace(bind=bind, peer_names=peer_names)
    return SimpleNamespace(config=cfg, state=NodeState(b"me"), crash=lambda g: None)


def ips(n, base="10.0.1."):
    return [f"{base}{i}" for i in range(1, n + 1)]


@pytest.fixture
def logged(capsys):
    log.configure("info")
    yield lambda: [ln for ln in capsys.readouterr().out.splitlines() if "event=dns_" in ln]
    log.configure("warning")


def test_every_record_is_a_peer_except_our_own_address():
    node = fake_node(bind="10.0.1.5")
    n = names.Names(node, FakeResolver({"tasks.p2p": ips(9)}))
    assert n.refresh("tasks.p2p", PORT) is True
    assert set(node.state.peers) == {(ip, PORT) for ip in ips(9) if ip != "10.0.1.5"}
    assert {e.source for e in node.state.peers.values()} == {Source.DNS}


def test_name_with_port_gives_peers_on_that_port():
    node = fake_node(peer_names=(("p2p-headless", 7000),))
    names.Names(node, FakeResolver({"p2p-headless": ["10.0.2.1"]})).refresh("p2p-headless", 7000)
    assert list(node.state.peers) == [("10.0.2.1", 7000)]


def test_many_records_give_a_bounded_random_sample():
    answer = ips(200, "10.0.")
    picked = []
    for seed in (1, 2):
        node = fake_node(bind="10.9.9.9")
        names.Names(node, FakeResolver({"tasks.p2p": answer}), rng=random.Random(seed)).refresh("tasks.p2p", PORT)
        picked.append(set(node.state.peers))
        assert len(node.state.peers) == names.DNS_SAMPLE
        assert all(ip in answer for ip, _ in node.state.peers)
    assert picked[0] != picked[1]  # a random sample: replicas do not all dial the same few


def test_sample_is_topped_up_as_addresses_fail():
    node = fake_node(bind="10.9.9.9")
    n = names.Names(node, FakeResolver({"tasks.p2p": ips(100, "10.0.")}))
    n.refresh("tasks.p2p", PORT)
    dead = list(node.state.peers.values())[:10]
    for e in dead:
        e.fails = names.FAILS_STALE
    n.refresh("tasks.p2p", PORT)
    working = [e for e in node.state.peers.values() if e.fails < names.FAILS_STALE]
    assert len(working) == names.DNS_SAMPLE and len(node.state.peers) == names.DNS_SAMPLE + 10


def test_sample_new_skips_known_and_fills_only_the_room_left():
    rng = random.Random(0)
    assert sample_sorted(["a", "b", "c"], skip=["b"], kept=0, limit=5, rng=rng) == ["a", "c"]
    assert len(names.sample_new(list("abcdefgh"), [], kept=3, limit=5, rng=rng)) == 2
    assert names.sample_new(list("abc"), [], kept=7, limit=5, rng=rng) == []


def sample_sorted(*args, **kw):
    return sorted(names.sample_new(*args, **kw))


def test_unresolvable_name_is_logged_once_per_change_and_not_fatal(logged):
    res = FakeResolver({})
    n = names.Names(fake_node(), res)
    for _ in range(3):
        assert n.refresh("tasks.p2p", PORT) is False
    lines = logged()
    assert len(lines) == 1 and "level=warning" in lines[0] and "result=failed" in lines[0]
    res.answers["tasks.p2p"] = ["10.0.1.1", "10.0.1.2"]
    n.refresh("tasks.p2p", PORT)
    n.refresh("tasks.p2p", PORT)
    res.answers["tasks.p2p"] = ["10.0.1.1", "10.0.1.2", "10.0.1.3"]
    n.refresh("tasks.p2p", PORT)
    lines = logged()
    assert len(lines) == 2 and all("result=ok" in ln for ln in lines)
    assert "addrs=2" in lines[0] and "addrs=3 added=1" in lines[1]


def test_a_hung_lookup_times_out_and_the_retry_waits_for_the_same_lookup(monkeypatch, logged):
    monkeypatch.setattr(names, "RESOLVE_TIMEOUT_S", 0.05)
    started = []

    def slow(name, port):  # a DNS server that never answers, until it does
        started.append(name)
        gevent.sleep(0.08)
        return ["10.0.1.1"]

    node = fake_node()
    n = names.Names(node, slow)
    t0 = time.monotonic()
    assert n.refresh("tasks.p2p", PORT) is False
    assert time.monotonic() - t0 < 0.1
    assert 'why="timed out"' in logged()[0]
    assert n.refresh("tasks.p2p", PORT) is True  # the first lookup's answer, now in
    assert started == ["tasks.p2p"] and list(node.state.peers) == [("10.0.1.1", PORT)]


def test_replicas_that_join_later_are_found_by_re_resolving(monkeypatch):
    monkeypatch.setattr(names, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(names, "RESOLVE_EVERY_S", 0.05)
    res = FakeResolver({})  # at first the name does not exist yet
    node = fake_node()
    n = names.Names(node, res)
    n.start()
    try:
        gevent.sleep(0.1)
        assert not node.state.peers and res.calls >= 3  # retried soon after each failure
        res.answers["tasks.p2p"] = ["10.0.1.1"]
        gevent.sleep(0.2)
        res.answers["tasks.p2p"] = ["10.0.1.1", "10.0.1.2"]  # a replica started later
        gevent.sleep(0.2)
    finally:
        n.stop()
    assert set(node.state.peers) == {("10.0.1.1", PORT), ("10.0.1.2", PORT)}


def test_real_resolver_answers_localhost_without_blocking():
    assert "127.0.0.1" in names.resolve_host("localhost", PORT)
    with pytest.raises(OSError):
        names.resolve_host("no-such-host.invalid", PORT)


# -- config: names in Peers, --peers-dns / NODE_PEERS_DNS ---------------------------------------

def load(tmp_path, peers, argv=(), env=None):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"Peers": peers}))
    return config.load(["--conf", str(conf), *argv], env or {})


def test_conf_names_and_flag_names_are_split_from_ips(tmp_path):
    cfg = load(tmp_path, ["10.0.0.2", "tasks.p2p", "seed.example:7000"], ["--peers-dns", "p2p-0.p2p,tasks.p2p"])
    assert cfg.peers == (("10.0.0.2", 6881),)
    assert cfg.peer_names == (("tasks.p2p", 6881), ("seed.example", 7000), ("p2p-0.p2p", 6881))


def test_peers_dns_from_environment(tmp_path):
    cfg = load(tmp_path, [], env={"NODE_PEERS_DNS": "tasks.p2p:7000"})
    assert cfg.peer_names == (("tasks.p2p", 7000),)


@pytest.mark.parametrize("bad", ["bad name", "-lead.example", "10.0.0.300", "a..b", "x" * 64])
def test_malformed_names_are_config_errors_naming_the_entry(tmp_path, bad):
    with pytest.raises(config.ConfigError) as e:
        load(tmp_path, ["10.0.0.2", bad])
    assert e.value.field == "Peers[1]"
    with pytest.raises(config.ConfigError) as e:
        load(tmp_path, [], [f"--peers-dns={bad}"])
    assert e.value.field == "peers-dns"


# -- whole nodes that know each other only by a name -------------------------------------------

def test_nodes_that_know_only_a_name_sync(tmp_path, torrent_factory, monkeypatch):
    sw = LocalSwarm(tmp_path)
    everyone = [sw.ip(i) for i in range(4)]
    monkeypatch.setattr(names, "resolve_host", FakeResolver({"tasks.p2p": everyone}))
    t = torrent_factory(200_000, 4096, seed=7)
    try:
        sw.start(0, t.conf(["tasks.p2p"]), data=t.data)
        for i in (1, 2, 3):
            sw.start(i, t.conf(["tasks.p2p"], file_info=(i != 3)))  # node 3 learns FileInfo too
        assert sw.wait_complete(timeout=15)
        for i in range(4):
            assert sw.file_bytes(i) == t.data
            assert (sw.ip(i), sw.port) not in sw.nodes[i].state.peers  # never its own record
    finally:
        sw.stop_all()
