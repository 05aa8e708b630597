"""Host-only checks of the harness itself (no Docker): the scenario generators keep the SPEC's
guarantees and the file variants hold what they claim. A generator that silently broke a
guarantee would make the swarm tests fail the node for the harness's fault."""
import hashlib
import os

import pytest

from .content import Content, materialize, write_master
from .plan import render_conf
from .scenarios import SCENARIOS, make_plan

SEEDS = range(40)


def _held(plan, node):
    """Pieces NODE's content has right (before any sync)."""
    kind, n = node.content.kind, plan.n_pieces
    return set(range(n)) if kind == "correct" else set(node.content.pieces)


@pytest.mark.parametrize("seed", SEEDS)
def test_simple_random_guarantees(seed):
    plan = make_plan("simple-random", seed)
    kinds = sorted(n.content.kind for n in plan.nodes)
    assert 2 <= len(plan.nodes) <= 10 and 1000 <= plan.size <= 1 << 20
    assert 128 <= plan.piece <= 4096
    assert kinds.count("correct") == 1 and set(kinds) <= {"correct", "empty", "missing"}
    assert all(set(n.peers) >= set(range(len(plan.nodes))) - {n.index} for n in plan.nodes)


@pytest.mark.parametrize("name", ["many-source", "restarts", "restarts-discovery"])
@pytest.mark.parametrize("seed", SEEDS)
def test_every_piece_somewhere_none_everywhere(name, seed):
    plan = make_plan(name, seed)
    held = [_held(plan, n) for n in plan.nodes]
    assert set().union(*held) == set(range(plan.n_pieces))
    assert all(len(h) < plan.n_pieces for h in held)
    assert 64 << 10 <= plan.piece <= 128 << 10 and 4 <= len(plan.nodes) <= 16


@pytest.mark.parametrize("seed", SEEDS)
def test_restarts_discovery_graph_connected(seed):
    plan = make_plan("restarts-discovery", seed)
    edges = {(n.index, p) for n in plan.nodes for p in n.peers}
    reach, todo = {0}, [0]
    while todo:
        cur = todo.pop()
        for a, b in edges:
            for x, y in ((a, b), (b, a)):
                if x == cur and y not in reach:
                    reach.add(y)
                    todo.append(y)
    assert reach == set(range(len(plan.nodes)))
    assert any(n.fileinfo_form == "full" for n in plan.nodes)
    assert any(n.fileinfo_form != "full" for n in plan.nodes)


@pytest.mark.parametrize("seed", SEEDS)
def test_simple_extra_someone_lists_everyone(seed):
    plan = make_plan("simple-extra", seed)
    assert any(n.content.kind == "correct" for n in plan.nodes)
    assert any(n.peers for n in plan.nodes)


def test_self_discovery_has_no_peers():
    for seed in SEEDS:
        conf = [render_conf(p, n, "172.30.1", {}) for p in [make_plan("self-discovery", seed)]
                for n in p.nodes]
        assert all(not c.get("Peers") for c in conf)


def test_plans_are_reproducible():
    for name in SCENARIOS:
        assert make_plan(name, 7).summary() == make_plan(name, 7).summary()
        assert make_plan(name, 7).summary() != make_plan(name, 8).summary()


def _piece_ok(data, info, i):
    start, length = info.piece_span(i)
    return hashlib.sha1(data[start:start + length]).hexdigest() == info.parts[i]


def test_file_variants(tmp_path):
    master = tmp_path / "m.bin"
    info = write_master(master, 10_000, 999, seed="t")
    assert len(info.parts) == 11 and os.path.getsize(master) == 10_000
    assert hashlib.sha1(master.read_bytes()).hexdigest() == info.sha1
    cases = {"correct": Content("correct"), "partial": Content("partial", frozenset({0, 5, 10})),
             "oversize": Content("oversize", length=10_500),
             "undersize": Content("undersize", length=4000),
             "garbage": Content("garbage", length=10_000), "empty": Content("empty")}
    for name, content in cases.items():
        path = materialize(content, master, info, tmp_path / name, seed=1)
        data = open(path, "rb").read()
        good = {i for i in range(11) if _piece_ok(data, info, i)}
        want = {"correct": set(range(11)), "partial": {0, 5, 10}, "oversize": set(range(11)),
                "undersize": {0, 1, 2, 3}, "garbage": set(), "empty": set()}[name]
        assert good == want, name
        assert len(data) == {"correct": 10_000, "partial": 10_000, "oversize": 10_500,
                             "undersize": 4000, "garbage": 10_000, "empty": 0}[name]
    assert materialize(Content("missing"), master, info, tmp_path / "x", seed=1) is None
