"""The SPEC scenarios against the real image: a few fixed seeds each (reproducible in CI), plus
the two full-scale simple-extra runs. SWARM_SEED_BASE=<n> shifts every seed to explore new
random instances. All of it took ~3 minutes on 2 cores (budget: 10).
"""
import os

import pytest

from .scenarios import make_plan, metadata_on_one_node, staggered

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BASE = int(os.environ.get("SWARM_SEED_BASE", "0"))
pytestmark = pytest.mark.swarm


def seeds(*values):
    return [BASE + v for v in values]


@pytest.mark.parametrize("seed", seeds(1, 2, 3, 4, 5, 6))
def test_simple_random(swarm, seed):
    swarm(make_plan("simple-random", seed))


@pytest.mark.parametrize("seed", seeds(1, 2, 3, 4, 5, 6))
def test_simple_extra(swarm, seed):
    swarm(make_plan("simple-extra", seed))


@pytest.mark.parametrize("seed", seeds(1, 2, 3, 4, 5))
def test_many_source(swarm, seed):
    swarm(make_plan("many-source", seed))


@pytest.mark.scale
def test_simple_extra_1gb(swarm):
    """Full-scale file: 1 GB on 2 nodes (one of them correct)."""
    swarm(make_plan("simple-extra", BASE + 100, nodes=2, size=GiB))


@pytest.mark.scale
def test_simple_extra_60_nodes(swarm):
    """Full-scale swarm: 60 nodes x 16 MB (~1 GB in total); sockets are the scarce resource."""
    swarm(make_plan("simple-extra", BASE + 200, nodes=60, size=16 * MiB))


@pytest.mark.restarts
@pytest.mark.parametrize("seed", seeds(1, 2))
def test_restarts(swarm, seed):
    swarm(make_plan("restarts", seed))


@pytest.mark.restarts
@pytest.mark.discovery
@pytest.mark.parametrize("seed", seeds(1, 2))
def test_restarts_discovery(swarm, seed):
    swarm(make_plan("restarts-discovery", seed))


@pytest.mark.discovery
@pytest.mark.parametrize("seed", seeds(1, 2))
def test_self_discovery(swarm, seed):
    swarm(make_plan("self-discovery", seed))


@pytest.mark.restarts
@pytest.mark.discovery
@pytest.mark.parametrize("seed", seeds(3))
def test_restarts_discovery_metadata_on_one_node(swarm, seed):
    swarm(metadata_on_one_node(make_plan("restarts-discovery", seed)))


@pytest.mark.discovery
@pytest.mark.parametrize("seed", seeds(3))
def test_self_discovery_staggered_starts(swarm, seed):
    """Nodes join over 5 s; each must still be found and synced (late starters included)."""
    swarm(staggered(make_plan("self-discovery", seed), 5.0))


@pytest.mark.parametrize("seed", seeds(7))
def test_many_source_staggered_starts(swarm, seed):
    swarm(staggered(make_plan("many-source", seed), 3.0))
