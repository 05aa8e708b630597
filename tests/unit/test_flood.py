"""One hostile peer costs the node a bounded amount, whatever it sends: for each message kind, a
peer with several connections that floods the largest legal frame of that kind and never reads.
During each attack a polite client gets its STATUS within a second, the node's memory stays
within 64 MiB of its unattacked peak, an honest peer beside the attacker still syncs, and where a
budget prices the frames (replies, PEERS addresses) the node spends under 0.6 of a core on them: on
top of what the same honest sync and STATUS polls cost it unattacked, measured the same way.
The node, the attacker and the honest peer are separate processes on 127.0.0.x."""

import hashlib
import json
import os
import random
import subprocess
import sys
import time

import pytest

from node import status
from node.config import parse_file_info
from swarmkit import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
SOLUTION = os.path.join(HERE, "..", "..", "solution")
PIECE = 16
PIECES = 1 << 16  # 1 MiB in 16-byte pieces: META is 1.3 MiB, a BITFIELD 8 KiB
ATTACK_S = 2.5
CONNS = 4  # what one address may hold open with a node (MAX_INBOUND_PER_IP)
STATUS_WITHIN_S = 1.0
RSS_MARGIN_MB = 64
KINDS = ["have", "bitfield", "request", "reject", "get_meta", "peers", "status_req"]
BUSY_MAX = 0.6  # cores the seeder may spend on a flood that its budgets slow down...
FAIR_SHARE_ONLY = {"have", "bitfield", "reject"}  # ...which these escape: cheap frames, bounded by turns only


def rss_mb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(key)


class Node:
    def __init__(self, tmp, name, ip, port, conf, data=None):
        self.ip, self.port = ip, port
        self.data = os.path.join(tmp, f"{name}.bin")
        if data is not None:
            with open(self.data, "wb") as f:
                f.write(data)
        conf_path = os.path.join(tmp, f"{name}.json")
        with open(conf_path, "w") as f:
            json.dump(conf, f)
        self.log = open(os.path.join(tmp, f"{name}.log"), "wb")
        self.p = subprocess.Popen([sys.executable, "-m", "node", "--data", self.data, "--conf", conf_path,
                                   "--bind", ip, "--port", str(port), "--discovery", "off",
                                   "--log-level", "warning"], cwd=SOLUTION, stdout=self.log, stderr=self.log)

    def status(self, timeout=STATUS_WITHIN_S):
        return status.fetch(self.ip, self.port, timeout=timeout)

    def wait_complete(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.status()["complete"]:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()


@pytest.fixture(scope="module")
def seeder(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("flood"))
    data = random.Random(7).randbytes(PIECE * PIECES)
    conf = {"Peers": [], "FileInfo": {"Size": len(data), "PartSize": PIECE, "Parts": [
        hashlib.sha1(data[i:i + PIECE]).hexdigest() for i in range(0, len(data), PIECE)]}}
    node = Node(tmp, "seeder", "127.0.0.20", free_port(), conf, data)
    try:
        assert node.wait_complete(10)
        node.tmp, node.conf, node.file = tmp, conf, data
        node.meta_id = parse_file_info(conf["FileInfo"]).meta_id
        leecher = honest_peer(node, "warmup")  # the unattacked peak includes serving a peer
        try:
            assert leecher.wait_complete(20)
        finally:
            leecher.stop()
        node.baseline_mb = rss_mb(node.p.pid, "VmHWM")
        leecher, _, node.baseline_busy = honest_sync_watched(node, "unattacked")
        leecher.stop()
        yield node
    finally:
        node.stop()


def cpu_s(pid):
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def honest_peer(seeder, name):
    conf = dict(seeder.conf, Peers=[f"{seeder.ip}:{seeder.port}"])
    return Node(seeder.tmp, name, f"127.0.0.{30 + len(name) % 20}", seeder.port, conf)


def honest_sync_watched(seeder, name):
    """From now for ATTACK_S: an honest peer starts syncing after 0.3 s and STATUS is asked every
    0.1 s. -> (the peer, the slowest STATUS, the seeder's CPU in cores over the span)."""
    cpu0 = cpu_s(seeder.p.pid)
    time.sleep(0.3)
    leecher = honest_peer(seeder, name)
    worst = 0.0
    deadline = time.monotonic() + ATTACK_S - 0.4
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        seeder.status()  # raises if no answer within STATUS_WITHIN_S
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.1)
    return leecher, worst, (cpu_s(seeder.p.pid) - cpu0) / (ATTACK_S - 0.1)


@pytest.mark.parametrize("kind", KINDS)
def test_a_flood_of_one_kind_costs_the_node_a_bounded_amount(seeder, kind):
    attacker = subprocess.Popen([sys.executable, os.path.join(HERE, "attacker.py"), seeder.ip, str(seeder.port),
                                 seeder.meta_id.hex(), str(PIECES), kind, str(CONNS), str(ATTACK_S)])
    leecher = None
    try:
        leecher, worst, busy = honest_sync_watched(seeder, f"honest-{kind}")
        assert worst < STATUS_WITHIN_S
        assert leecher.wait_complete(20), "an honest peer beside the attacker did not sync"
        with open(leecher.data, "rb") as f:
            assert f.read() == seeder.file
        peak = rss_mb(seeder.p.pid, "VmHWM")
        print(f"{kind}: STATUS in {worst:.3f} s at worst; seeder busy {busy:.2f} of a core "
              f"(unattacked {seeder.baseline_busy:.2f}); peak RSS {peak:.0f} MB (unattacked {seeder.baseline_mb:.0f})")
        assert peak < seeder.baseline_mb + RSS_MARGIN_MB
        assert kind in FAIR_SHARE_ONLY or busy - seeder.baseline_busy < BUSY_MAX
        assert seeder.p.poll() is None
    finally:
        attacker.kill()
        attacker.wait()
        if leecher is not None:
            leecher.stop()
