"""The plan of one swarm run: which nodes exist, what each holds, what its torrent.conf says.

Scenario generators (scenarios.py) build a `SwarmPlan`; the harness (harness.py) executes it.
Plans name peers by node index and IPs by host octet, so they do not depend on which /24 the
run's network gets; `render_conf` turns one node's view into the JSON file it is given.
"""
from dataclasses import dataclass, field
from typing import Optional

from .content import Content

# How a node's /data.bin gets into its container:
#   bind - a host file bind-mounted at /data.bin (written in place by the node)
#   copy - `docker cp` into the created container before start (lives in the container layer)
#   none - nothing: /data.bin does not exist when the node starts (only for "missing")
DELIVERIES = ("bind", "copy", "none")
# How Peers / FileInfo appear in a conf: a value, JSON null, or the key left out.
PEERS_FORMS = ("list", "null", "absent")
FILEINFO_FORMS = ("full", "null", "absent", "parts-null")


@dataclass
class NodeSpec:
    """One container of the run."""
    index: int
    host: int                      # last octet of its IP in the run's /24 (2..254)
    content: Content
    delivery: str = "bind"
    peers: list = field(default_factory=list)   # node indexes listed in Peers (may hold its own)
    peers_form: str = "list"
    fileinfo_form: str = "full"
    start_delay_s: float = 0.0     # staggered starts: how long after the first start this one starts

    def __post_init__(self):
        if self.content.kind == "missing":
            self.delivery = "none"
        assert self.delivery in DELIVERIES and self.peers_form in PEERS_FORMS
        assert self.fileinfo_form in FILEINFO_FORMS


@dataclass
class ChaosSpec:
    """Restart containers while the swarm syncs: every `mean_interval_s` on average a random
    container is restarted (up to `parallel` at once), never the same one twice within
    `min_gap_s` (the SPEC: "almost never more than once a second each"). Restarts go on for
    at least `soak_s` after they began, even once all nodes completed, so restarts of complete
    nodes are covered too; then they stop and every node must be complete again."""
    mean_interval_s: float = 0.25
    min_gap_s: float = 1.0
    parallel: int = 3
    soak_s: float = 10.0


@dataclass
class SwarmPlan:
    """Everything needed to run (and re-run, from `seed`) one scenario instance."""
    scenario: str
    seed: int
    size: int
    piece: int
    nodes: list
    timeout_s: float
    chaos: Optional[ChaosSpec] = None
    pins: dict = field(default_factory=dict)   # scale overrides given to make_plan (nodes=...)

    def reproduce(self):
        """The CLI command re-running exactly this plan."""
        flags = "".join(f" --{k} {v}" for k, v in sorted(self.pins.items()))
        return (f"python -m tests.swarm.run --scenario {self.scenario} --seed {self.seed} "
                f"--runs 1{flags}")

    @property
    def n_pieces(self):
        return -(-self.size // self.piece)

    def summary(self):
        """One line naming every node's content, delivery and conf shape (printed on failure)."""
        parts = []
        for n in self.nodes:
            conf = "" if n.peers_form == "list" and n.fileinfo_form == "full" else \
                f",peers={n.peers_form},fi={n.fileinfo_form}"
            parts.append(f"{n.index}:{n.content.describe(self.n_pieces)}/{n.delivery}"
                         f"/p{len(n.peers)}{conf}")
        return " ".join(parts)


def ip_of(prefix, node):
    """The node's IP on a network whose /24 prefix is PREFIX ('172.30.5')."""
    return f"{prefix}.{node.host}"


def render_conf(plan, node, prefix, fileinfo_conf):
    """The torrent.conf dict NODE is given, on network PREFIX, FileInfo object FILEINFO_CONF."""
    conf = {}
    if node.peers_form == "list":
        conf["Peers"] = [ip_of(prefix, plan.nodes[i]) for i in node.peers]
    elif node.peers_form == "null":
        conf["Peers"] = None
    if node.fileinfo_form == "full":
        conf["FileInfo"] = fileinfo_conf
    elif node.fileinfo_form == "null":
        conf["FileInfo"] = None
    elif node.fileinfo_form == "parts-null":
        conf["FileInfo"] = dict(fileinfo_conf, Parts=None)
    return conf
