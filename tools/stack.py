"""`make stack-up N=30`, `make stack-status`, `make stack-down`: the node as a Docker Swarm stack.

up      make this engine a one-node swarm if it is in none (`docker swarm init --advertise-addr
        127.0.0.1`, remembered so `down` leaves it again), write a random file and its torrent.conf
        (FileInfo only: no peer addresses), deploy deploy/stack.yml with one seed task and N
        replicas that find each other by DNS alone (`tasks.<service>`, UDP discovery off), wait
        until every task holds the file, verify each task's file by digest, print a table, and
        leave the stack running (seeding).
status  one row per task, asked with `python3 -m node status` inside its container.
down    remove the stack, its network, config and volumes; leave the swarm if `up` created it.

Rule: everything the stack creates is named after it (services, network, config: STACK_*;
volumes: STACK_p2p-SLOT), so `down` removes exactly that and nothing else. Every docker call has
a timeout. Progress comes from the tasks' own log lines (`docker service logs -f`): a `docker exec`
per task per second would slow the very swarm it watches. tests/swarm/test_stack.py uses the
same functions.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from local_swarm import console, parse_logfmt, parse_size, parse_ts, render, status_rows  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK_FILE = os.path.join(ROOT, "deploy", "stack.yml")
WORK_ROOT = os.path.join(ROOT, "tmp", "stack")
SWARM_MARK = os.path.join(WORK_ROOT, "swarm-created-by-stack-up")  # `down` leaves only then
SERVICES = ("seed", "p2p")
DATA_IN_TASK = "/var/lib/p2p/data.bin"  # NODE_DATA in deploy/stack.yml
DEFAULT_SUBNET = "10.213.0.0/20"  # larger than a /24: a /24 holds 253 tasks at most
CALL_TIMEOUT_S = 120.0  # one docker CLI call; `stack deploy` of 30 tasks takes a few seconds
SYNC_TIMEOUT_S = 240.0  # deploy to every task complete; 30 tasks and 64 MiB take ~20 s here
GONE_TIMEOUT_S = 90.0  # `stack rm` returns at once; tasks stop and the network goes after
POLL_S = 0.5
STATUS_CMD = ["python3", "-m", "node", "status", "127.0.0.1", "--json"]


class StackError(RuntimeError):
    """A docker call failed or the stack did not get where it should within its time."""


def docker(*args, timeout=CALL_TIMEOUT_S, check=True, env=None):
    cmd = ["docker", *map(str, args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    except subprocess.TimeoutExpired as e:
        raise StackError(f"timed out after {timeout:.0f}s: {' '.join(cmd[:5])}") from e
    if check and proc.returncode:
        raise StackError(f"{' '.join(cmd[:5])} -> rc={proc.returncode}: {proc.stderr.strip()[:500]}")
    return proc


# -- the swarm ---------------------------------------------------------------------------------
def swarm_state():
    """'inactive', 'active', 'pending', 'error' or 'locked' (docker info's LocalNodeState)."""
    return docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()


def ensure_swarm():
    """Make this engine a one-node swarm if it is in none. True when this call created it."""
    state = swarm_state()
    if state == "active":
        return False
    if state != "inactive":
        raise StackError(f"this engine's swarm is {state!r}; fix it by hand (docker swarm ...)")
    # 127.0.0.1: a one-node swarm that announces itself nowhere; no other host can join it.
    docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    return True


def leave_swarm():
    """Leave the swarm, and remove the bridge `swarm init` created for its tasks."""
    docker("swarm", "leave", "--force")
    docker("network", "rm", "docker_gwbridge", check=False)


# -- inputs and deploy -------------------------------------------------------------------------
def write_inputs(work, size, piece, seed):
    """work/seed/data.bin (random, SIZE bytes) and work/torrent.conf (its FileInfo, no Peers).
    Returns the file's sha1 (hex)."""
    os.makedirs(os.path.join(work, "seed"), exist_ok=True)
    rng, parts, whole = random.Random(seed), [], hashlib.sha1()
    with open(os.path.join(work, "seed", "data.bin"), "wb") as f:
        for off in range(0, size, piece):
            block = rng.randbytes(min(piece, size - off))
            parts.append(hashlib.sha1(block).hexdigest())
            whole.update(block)
            f.write(block)
    with open(os.path.join(work, "torrent.conf"), "w") as f:
        json.dump({"Peers": [], "FileInfo": {"Size": size, "PartSize": piece, "Parts": parts}}, f)
    return whole.hexdigest()


def deploy(stack, n, image, work, subnet=DEFAULT_SUBNET, log_level="info"):
    env = dict(os.environ, IMAGE=image, REPLICAS=str(n), SUBNET=subnet, NODE_LOG_LEVEL=log_level,
               CONF_FILE=os.path.join(work, "torrent.conf"), SEED_DIR=os.path.join(work, "seed"))
    docker("stack", "deploy", "-c", STACK_FILE, stack, env=env)


def containers(stack):
    """Running task containers of STACK as (task name 'p2p.3' / 'seed.1', container id)."""
    out = docker("ps", "--filter", f"label=com.docker.stack.namespace={stack}", "--format",
                 '{{.ID}} {{.Label "com.docker.swarm.task.name"}}').stdout
    rows = []
    for line in out.splitlines():
        cid, _, task = line.partition(" ")
        rows.append((short_task(stack, task), cid))
    return sorted(rows, key=lambda r: (r[0].split(".")[0] != "seed", int(r[0].split(".")[1] or 0)))


def short_task(stack, task):
    """'p2p_p2p.3.x7f...' (a task or log prefix) -> 'p2p.3'."""
    name, slot = (task.removeprefix(stack + "_").split(".") + ["", ""])[:2]
    return f"{name}.{slot}"


# -- watching it sync --------------------------------------------------------------------------
class Watch:
    """Follows `docker service logs -f` of both services: per task, when it started, completed."""

    def __init__(self, stack):
        self.stack = stack
        self.tasks = {}  # 'p2p.3' -> {"started": ts, "done": ts, "dns": ts of the first answer}
        self._lock = threading.Lock()
        self._procs = []

    def start(self):
        for svc in SERVICES:
            p = subprocess.Popen(["docker", "service", "logs", "-f", "--no-trunc", f"{self.stack}_{svc}"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
            self._procs.append(p)
            threading.Thread(target=self._read, args=(p,), daemon=True).start()

    def stop(self):
        for p in self._procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    def _read(self, proc):
        for line in proc.stdout:
            prefix, sep, rest = line.partition("|")
            if sep:
                self.feed(short_task(self.stack, prefix.strip().split("@")[0]), parse_logfmt(rest))

    def feed(self, task, f):
        event, ts = f.get("event"), f.get("ts")
        if not ts:
            return
        key = {"listening": "started", "complete": "done"}.get(event)
        if event == "dns_resolve" and f.get("result") == "ok":
            key = "dns"
        if key:
            with self._lock:
                self.tasks.setdefault(task, {}).setdefault(key, parse_ts(ts))

    def snapshot(self):
        with self._lock:
            return {k: dict(v) for k, v in self.tasks.items()}

    def wait_complete(self, n, timeout):
        """Every one of the n replicas and the seed logged `complete`: their snapshot, else None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.snapshot()
            if sum(1 for t in snap.values() if "done" in t) >= n + 1:
                return snap
            time.sleep(POLL_S)
        return None


def sync_figures(snap):
    """Seconds from the first task's start to the last completion, and to the first DNS answer."""
    t0 = min(t["started"] for t in snap.values() if "started" in t)
    return {"last_done_s": max(t["done"] for t in snap.values()) - t0,
            "first_dns_s": min((t["dns"] for t in snap.values() if "dns" in t), default=t0) - t0}


def verify(stack, expected):
    """[(task, ok, seen)] for every running task: sha1 of its data file, read inside its
    container; `seen` is the digest, or why there is none (the exec's error)."""
    def one(row):
        r = docker("exec", row[1], "sha1sum", DATA_IN_TASK, check=False)
        words = r.stdout.split() if r.returncode == 0 else []
        seen = words[0] if words else f"no digest: {(r.stderr or '').strip()[:200] or r.returncode}"
        return row[0], seen == expected, seen
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, containers(stack)))


# -- removing it ---------------------------------------------------------------------------------
def leftovers(stack):
    """What of STACK still exists: services, containers, networks, configs, volumes (names)."""
    def names(*args):
        return [x for x in docker(*args).stdout.split() if x.startswith(stack + "_")]
    found = names("volume", "ls", "-q", "--filter", f"name={stack}_")
    found += names("ps", "-a", "--filter", f"label=com.docker.stack.namespace={stack}", "--format", "{{.Names}}")
    found += names("network", "ls", "--filter", f"name={stack}_", "--format", "{{.Name}}")
    if swarm_state() == "active":
        found += names("service", "ls", "--filter", f"name={stack}_", "--format", "{{.Name}}")
        found += names("config", "ls", "--filter", f"name={stack}_", "--format", "{{.Name}}")
    return found


def remove(stack):
    """Remove STACK's services, network and config, wait for its tasks to go, then its volumes."""
    if swarm_state() == "active":
        docker("stack", "rm", stack, check=False)
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while time.monotonic() < deadline:
        if not [x for x in leftovers(stack) if "_p2p-" not in x]:  # all but the volumes
            break
        time.sleep(POLL_S)
    vols = [v for v in leftovers(stack) if v.startswith(f"{stack}_p2p-")]
    if vols:
        docker("volume", "rm", *vols, check=False)
    left = leftovers(stack)
    if left:
        raise StackError(f"left behind after {GONE_TIMEOUT_S:.0f}s: {' '.join(left)}")


# -- commands ------------------------------------------------------------------------------------
def cmd_up(args):
    size, piece = parse_size(args.size), parse_size(args.piece)
    work = os.path.join(WORK_ROOT, args.stack)
    os.makedirs(WORK_ROOT, exist_ok=True)
    if ensure_swarm():
        open(SWARM_MARK, "w").close()
        console.print("swarm: created a one-node swarm (advertised on 127.0.0.1); `make stack-down` leaves it")
    remove(args.stack)  # a stack of the same name from before: start from nothing
    expected = write_inputs(work, size, piece, args.seed)
    console.print(f"[bold]stack {args.stack}[/]: seed + {args.n} replicas, {size / 1e6:.1f} MB file, "
                  f"{piece} B pieces, subnet {args.subnet}, sha1 {expected[:12]}…")
    t0 = time.monotonic()
    deploy(args.stack, args.n, args.image, work, args.subnet)
    watch = Watch(args.stack)
    watch.start()
    try:
        snap = watch.wait_complete(args.n, args.timeout)
    finally:
        watch.stop()
    if snap is None:
        console.print(f"[red]not every task completed within {args.timeout:.0f}s[/]: "
                      f"`docker service ls`, `docker service logs {args.stack}_p2p`; left running")
        return 1
    up_s = time.monotonic() - t0
    checks = verify(args.stack, expected)
    cmd_status(args)
    fig = sync_figures(snap)
    bad = [f"{t} ({seen})" for t, ok, seen in checks if not ok]
    console.print(f"deploy to all complete {up_s:.1f}s; first task start to last complete "
                  f"{fig['last_done_s']:.1f}s (first DNS answer at {fig['first_dns_s']:.1f}s)")
    if bad or len(checks) != args.n + 1:
        console.print(f"[red]digest mismatch or missing tasks: {', '.join(bad) or len(checks)}[/]")
        return 1
    console.print(f"[green]all {len(checks)} files verified by sha1[/]; the stack keeps seeding: "
                  "`make stack-status`, `make stack-down`.")
    return 0


def cmd_status(args):
    rows = containers(args.stack)
    if not rows:
        console.print(f"no stack {args.stack} is running (`make stack-up N=30`)")
        return 1

    def ask(row):
        r = docker("exec", row[1], *STATUS_CMD, check=False, timeout=15)
        return json.loads(r.stdout) if r.returncode == 0 else None
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = dict(zip([t for t, _ in rows], pool.map(ask, rows)))
    console.print(render(status_rows(statuses)))
    return 0


def cmd_down(args):
    remove(args.stack)
    shutil.rmtree(os.path.join(WORK_ROOT, args.stack), ignore_errors=True)
    if os.path.exists(SWARM_MARK):
        leave_swarm()
        os.remove(SWARM_MARK)
        console.print("swarm: left (stack-up had created it)")
    console.print(f"stack {args.stack} removed")
    return 0


def main(argv):
    p = argparse.ArgumentParser(prog="stack", description=__doc__.split("\n")[0])
    p.add_argument("--stack", default="p2p", help="stack name (prefixes all it creates)")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--n", type=int, default=30, help="replicas besides the seed")
    up.add_argument("--size", default="64M")
    up.add_argument("--piece", default="256K")
    up.add_argument("--image", default="p2p-node:latest")
    up.add_argument("--subnet", default=DEFAULT_SUBNET)
    up.add_argument("--seed", type=int, default=int(time.time()))
    up.add_argument("--timeout", type=float, default=SYNC_TIMEOUT_S)
    sub.add_parser("status")
    sub.add_parser("down")
    args = p.parse_args(argv)
    try:
        return {"up": cmd_up, "status": cmd_status, "down": cmd_down}[args.cmd](args)
    except StackError as e:
        console.print(f"[red]stack: {e}[/]")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
