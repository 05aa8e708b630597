"""The node as a Docker Swarm mode stack (deploy/stack.yml), for real on this host.

A one-node swarm (`docker swarm init --advertise-addr 127.0.0.1`, only if this engine is in none,
and left again then), an internal overlay network larger than a /24 with endpoint_mode dnsrr, a
seed and 30 replicas that are given no peer address and run no discovery: they can find each other
only through `tasks.<service>`. Every task's file is verified by digest; then everything the test
created (stack, network, config, volumes; the swarm and docker_gwbridge if it made them) is
removed by name, and the test checks that nothing is left.
"""

import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
stack = pytest.importorskip("stack")

STACK = "p2ptest"
REPLICAS = 30
SUBNET = "10.214.16.0/20"  # not stack-up's: a `make stack-up` stack may be running beside it
SIZE, PIECE = 32 << 20, 256 << 10  # 128 pieces: every replica fetches from several peers
SYNC_TIMEOUT_S = 180.0  # measured: ~15 s from deploy to all complete on 2 idle cores

pytestmark = [pytest.mark.swarm, pytest.mark.stack, pytest.mark.timeout(480)]


def inspect(kind, name, fmt):
    return stack.docker(kind, "inspect", "--format", fmt, name).stdout.strip()


def test_thirty_replicas_find_each_other_by_dns_alone(image, tmp_path):
    created = stack.ensure_swarm()
    try:
        stack.remove(STACK)  # what a killed earlier run left
        expected = stack.write_inputs(str(tmp_path), SIZE, PIECE, seed=13)
        assert json.loads((tmp_path / "torrent.conf").read_text())["Peers"] == []
        t0 = time.monotonic()
        stack.deploy(STACK, REPLICAS, image, str(tmp_path), SUBNET)
        watch = stack.Watch(STACK)
        watch.start()
        try:
            snap = watch.wait_complete(REPLICAS, SYNC_TIMEOUT_S)
        finally:
            watch.stop()
        up_s = time.monotonic() - t0
        assert inspect("network", f"{STACK}_p2p", "{{.Internal}} {{range .IPAM.Config}}{{.Subnet}}{{end}}") \
            == f"true {SUBNET}"
        env = inspect("service", f"{STACK}_p2p", "{{json .Spec.TaskTemplate.ContainerSpec.Env}}")
        assert "NODE_DISCOVERY=off" in env and "NODE_PEERS_DNS=tasks.seed,tasks.p2p" in env
        assert inspect("service", f"{STACK}_p2p", "{{.Spec.EndpointSpec.Mode}}") == "dnsrr"
        done = sorted(t for t, v in (watch.snapshot().items()) if "done" in v)
        assert snap is not None, f"within {SYNC_TIMEOUT_S:.0f}s only {len(done)} tasks completed: {done}"
        checks = stack.verify(STACK, expected)
        assert len(checks) == REPLICAS + 1, f"running tasks: {[t for t, _, _ in checks]}"
        assert [(t, seen) for t, ok, seen in checks if not ok] == [], f"not the seed's file (sha1 {expected})"
        fig = stack.sync_figures(snap)
        print(f"\nstack: seed + {REPLICAS} replicas, {SIZE >> 20} MiB: deploy to all complete "
              f"{up_s:.1f}s; first start to last complete {fig['last_done_s']:.1f}s; first DNS "
              f"answer {fig['first_dns_s']:.1f}s; {len(checks)} files verified", flush=True)
    finally:
        stack.remove(STACK)
        if created:
            stack.leave_swarm()
    assert stack.leftovers(STACK) == []
    assert stack.swarm_state() == ("inactive" if created else "active")
    if created:
        assert stack.docker("network", "inspect", "docker_gwbridge", check=False).returncode != 0
