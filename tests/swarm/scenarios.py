"""Seeded generators of swarm plans, one per SPEC scenario, randomized within its guarantees.

`make_plan(name, seed, **overrides)` is the entry point; the same (name, seed, overrides)
always gives the same plan, so a failing run is reproduced from the seed it prints.
Overrides (nodes=, size=, piece=) pin the scale, e.g. for the 1 GB and 60-node runs.
"""
import math
import random
from dataclasses import dataclass

from .content import Content
from .plan import ChaosSpec, NodeSpec, SwarmPlan

KiB, MiB = 1 << 10, 1 << 20
# docker cp streams through the engine (tar), ~10x slower than a bind mount; above this size
# every node gets a bind mount so setup stays short.
COPY_MAX_SIZE = 64 * MiB
COPY_PROBABILITY = 0.3
# Oversize (and garbage) files are at most this much longer than the real file: enough to test
# truncation, without doubling the disk use of a 1 GB run.
OVERSIZE_MAX_EXTRA = 4 * MiB
# Piece counts above this make torrent.conf huge for no testing gain.
MAX_PIECES = 8192


@dataclass(frozen=True)
class Scenario:
    """A named plan generator with the SPEC's timeout (a hard limit here)."""
    name: str
    generate: object
    timeout_s: float


def log_uniform(rng, lo, hi):
    """An integer in [lo, hi], uniform in log scale (small and large sizes equally likely)."""
    return min(hi, max(lo, int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))))))


def _hosts(rng, n):
    """N distinct, unordered host octets in 2..254 (.1 is the network's gateway)."""
    return rng.sample(range(2, 255), n)


def _full_peers(rng, n, me):
    """Every node's index in random order; half the time the node's own index stays in."""
    peers = [i for i in range(n) if i != me or rng.random() < 0.5]
    rng.shuffle(peers)
    return peers


def _delivery(rng, size):
    return "copy" if size <= COPY_MAX_SIZE and rng.random() < COPY_PROBABILITY else "bind"


def _nodes(rng, contents, size):
    """NodeSpecs for the given contents, with random host octets, deliveries and full peers."""
    hosts, n = _hosts(rng, len(contents)), len(contents)
    return [NodeSpec(index=i, host=hosts[i], content=c, delivery=_delivery(rng, size),
                     peers=_full_peers(rng, n, i)) for i, c in enumerate(contents)]


def simple_random(rng, seed, nodes=None, size=None, piece=None):
    """2..10 nodes, 1 KB..1 MB, piece 128 B..4 KB; one node correct, others empty or missing."""
    n = nodes or rng.randint(2, 10)
    piece = piece or rng.randint(128, 4 * KiB)
    size = size or log_uniform(rng, 1000, MiB)
    if rng.random() < 0.25:  # exact multiple of the piece size: no short last piece
        size = max(size // piece, -(-1000 // piece)) * piece
    seeder = rng.randrange(n)
    contents = [Content("correct") if i == seeder else Content(rng.choice(("empty", "missing")))
                for i in range(n)]
    return SwarmPlan("simple-random", seed, size, piece, _nodes(rng, contents, size),
                     SCENARIOS["simple-random"].timeout_s)


def _extra_content(rng, size, n_pieces):
    """A non-seeder's file in simple-extra: anything at all."""
    kind = rng.choice(("garbage", "partial", "oversize", "undersize", "empty", "missing"))
    if kind == "garbage":
        longest = size + OVERSIZE_MAX_EXTRA
        return Content(kind, length=size if rng.random() < 0.5 else rng.randint(1, longest))
    if kind == "partial":
        k = rng.randint(0, n_pieces)
        return Content(kind, pieces=frozenset(rng.sample(range(n_pieces), k)))
    if kind == "oversize":
        extra = max(1, min(size // 2, OVERSIZE_MAX_EXTRA))
        return Content(kind, length=size + rng.randint(1, extra))
    if kind == "undersize":
        return Content(kind, length=rng.randint(0, size - 1))
    return Content(kind)


def _empty_some_peers(rng, nodes):
    """Empty the Peers ([], null or absent) of up to n-1 nodes: one full list reaches all."""
    for node in rng.sample(nodes, rng.randint(0, len(nodes) - 1)):
        if rng.random() < 0.4:
            node.peers, node.peers_form = [], rng.choice(("list", "null", "absent"))


def simple_extra(rng, seed, nodes=None, size=None, piece=None):
    """Seeders on one or several nodes, anything on the others, some with empty Peers."""
    n = nodes or rng.randint(2, 12)
    size = size or log_uniform(rng, KiB, 8 * MiB)
    lo = max(128, -(-size // MAX_PIECES))
    piece = piece or log_uniform(rng, lo, max(lo, min(MiB, size)))
    n_pieces = -(-size // piece)
    seeders = set(rng.sample(range(n), rng.randint(1, max(1, n // 3))))
    contents = [Content("correct") if i in seeders else _extra_content(rng, size, n_pieces)
                for i in range(n)]
    plan_nodes = _nodes(rng, contents, size)
    _empty_some_peers(rng, plan_nodes)
    return SwarmPlan("simple-extra", seed, size, piece, plan_nodes,
                     SCENARIOS["simple-extra"].timeout_s)


def _spread_pieces(rng, n_pieces, sources):
    """{source: set of pieces}: every piece on 1..3 sources, no source holding them all."""
    held = {s: set() for s in sources}
    for p in range(n_pieces):
        k = 1 if rng.random() < 0.6 else rng.randint(1, min(3, len(sources)))
        for s in rng.sample(sources, k):
            held[s].add(p)
    for s in sources:
        if len(held[s]) == n_pieces > 1:
            p = rng.randrange(n_pieces)
            held[s].discard(p)
            if not any(p in h for h in held.values()):
                held[rng.choice([o for o in sources if o != s])].add(p)
    return held


def many_source(rng, seed, nodes=None, size=None, piece=None, name="many-source"):
    """4..16 nodes, 1..16 MB, piece 64..128 KB; each piece right on >= 1 node, none has all."""
    n = nodes or rng.randint(4, 16)
    size = size or log_uniform(rng, MiB, 16 * MiB)
    piece = piece or rng.randint(64 * KiB, 128 * KiB)
    n_pieces = -(-size // piece)
    sources = rng.sample(range(n), rng.randint(2, n))
    held = _spread_pieces(rng, n_pieces, sources)
    contents = []
    for i in range(n):
        if i in held:
            contents.append(Content("partial", pieces=frozenset(held[i])))
        else:
            kind = rng.choice(("garbage", "garbage", "empty", "missing"))
            contents.append(Content(kind, length=size if kind == "garbage" else 0))
    return SwarmPlan(name, seed, size, piece, _nodes(rng, contents, size),
                     SCENARIOS[name].timeout_s)


def restarts(rng, seed, **overrides):
    """many-source while containers get restarted (at most about once a second each)."""
    plan = many_source(rng, seed, name="restarts", **overrides)
    plan.chaos = ChaosSpec()
    return plan


def _connected_peers(rng, nodes):
    """Replace Peers by a random connected undirected graph, each edge listed on one side."""
    for node in nodes:
        node.peers = []
    order = rng.sample(nodes, len(nodes))
    edges = [(order[i], rng.choice(order[:i])) for i in range(1, len(order))]
    edges += [tuple(rng.sample(nodes, 2)) for _ in range(len(nodes) // 3)]
    for a, b in edges:
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        if b.index not in a.peers:
            a.peers.append(b.index)


def restarts_discovery(rng, seed, **overrides):
    """restarts, plus partial confs: FileInfo on >= 1 node, Peers only a connected graph."""
    plan = many_source(rng, seed, name="restarts-discovery", **overrides)
    plan.chaos = ChaosSpec()
    _connected_peers(rng, plan.nodes)
    keep = rng.sample(plan.nodes, rng.randint(1, len(plan.nodes) - 1))
    for node in plan.nodes:
        if node not in keep:
            node.fileinfo_form = rng.choice(("null", "absent", "parts-null"))
    return plan


def self_discovery(rng, seed, nodes=None, **overrides):
    """many-source content, but every Peers is empty: nodes must find each other in their /24."""
    plan = many_source(rng, seed, name="self-discovery", nodes=nodes or rng.randint(4, 10),
                       **overrides)
    for node in plan.nodes:
        node.peers, node.peers_form = [], rng.choice(("list", "null", "absent"))
    return plan


def staggered(plan, max_delay_s, seed=0):
    """Start the nodes over `max_delay_s` seconds instead of all at once (late joiners)."""
    rng = random.Random(f"stagger:{plan.seed}:{seed}")
    for node in plan.nodes:
        node.start_delay_s = round(rng.uniform(0, max_delay_s), 2)
    return plan


def metadata_on_one_node(plan):
    """Only one node's conf carries FileInfo: every other node must learn it from a peer."""
    rng = random.Random(f"meta-one:{plan.seed}")
    keep = rng.choice(plan.nodes)
    for node in plan.nodes:
        node.fileinfo_form = "full" if node is keep else rng.choice(("null", "absent", "parts-null"))
    return plan


SCENARIOS = {s.name: s for s in (
    Scenario("simple-random", simple_random, 30.0),
    Scenario("simple-extra", simple_extra, 60.0),
    Scenario("many-source", many_source, 30.0),
    Scenario("restarts", restarts, 120.0),
    Scenario("restarts-discovery", restarts_discovery, 120.0),
    Scenario("self-discovery", self_discovery, 120.0),
)}


def make_plan(name, seed, **overrides):
    """The plan of scenario NAME for SEED; overrides (nodes, size, piece) pin its scale."""
    scenario = SCENARIOS[name]
    rng = random.Random(f"{name}:{seed}")
    pins = {k: v for k, v in overrides.items() if v}
    plan = scenario.generate(rng, seed, **pins)
    plan.pins = pins
    return plan
