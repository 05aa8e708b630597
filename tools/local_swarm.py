"""`make local-swarm N=10` and friends: run a swarm of containers with compose and watch it sync.

up      generate a random file and its torrent.conf, start one seeder and N-1 replicas (no file,
        no peers: they find each other by self-discovery), show live progress per node, verify
        every node's file by digest, print a summary, and leave the swarm running (seeding).
status  the same table, once, for a running swarm.
logs    follow every node's log, prefixed by node; filter by level or node.
down    stop and remove the swarm.

Rule: all Docker access goes through the docker and compose CLIs (v2 `docker compose` or v1
`docker-compose`); node state is read with `python3 -m node status` inside each container.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE_FILE = os.path.join(ROOT, "swarm", "compose.yml")
PROJECT = "p2pswarm"
SWARM_DIR = os.path.join(ROOT, "tmp", "swarm")
POLL_S = 0.5  # how often the live display asks every node for its status
STATUS_CMD = ["python3", "-m", "node", "status", "127.0.0.1", "--json"]

console = Console()


def parse_size(text):
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    if t and t[-1] in units and t[-1] != "":
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def compose_cmd():
    """The compose CLI to use: COMPOSE from the environment, else v2, else v1."""
    if os.environ.get("COMPOSE"):
        return os.environ["COMPOSE"].split()
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    sys.exit("local-swarm: neither `docker compose` nor `docker-compose` is installed")


def compose(*args, check=True, **kw):
    env = dict(os.environ, SWARM_DIR=SWARM_DIR)
    cmd = compose_cmd() + ["-p", PROJECT, "-f", COMPOSE_FILE, *args]
    return subprocess.run(cmd, check=check, env=env, **kw)


def containers():
    """Running containers of the swarm, seeder first, as (name, id)."""
    out = subprocess.run(["docker", "ps", "--filter", f"label=com.docker.compose.project={PROJECT}",
                          "--format", "{{.Names}} {{.ID}}"], capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return sorted(rows, key=lambda r: (0 if "seeder" in r[0] else 1, _replica_number(r[0])))


def _replica_number(name):
    digits = "".join(c if c.isdigit() else " " for c in name).split()
    return int(digits[-1]) if digits else 0


def short(name):
    return name.removeprefix(PROJECT).strip("-_").replace("_", "-")


def node_status(cid):
    r = subprocess.run(["docker", "exec", cid, *STATUS_CMD], capture_output=True, text=True, timeout=10)
    return json.loads(r.stdout) if r.returncode == 0 else None


def gather(nodes, pool):
    return dict(zip([n for n, _ in nodes], pool.map(lambda nc: _safe_status(nc[1]), nodes)))


def _safe_status(cid):
    try:
        return node_status(cid)
    except (subprocess.TimeoutExpired, ValueError):
        return None


# -- generating the swarm's inputs ---------------------------------------------------------------
def write_inputs(size, piece, seed):
    os.makedirs(SWARM_DIR, exist_ok=True)
    rng = __import__("random").Random(seed)
    parts, digest = [], hashlib.sha1()
    with open(os.path.join(SWARM_DIR, "seed.bin"), "wb") as f:
        for off in range(0, size, piece):
            block = rng.randbytes(min(piece, size - off))
            parts.append(hashlib.sha1(block).hexdigest())
            digest.update(block)
            f.write(block)
    info = {"Size": size, "PartSize": piece, "Parts": parts}
    with open(os.path.join(SWARM_DIR, "seeder.conf"), "w") as f:
        json.dump({"Peers": [], "FileInfo": info}, f)
    with open(os.path.join(SWARM_DIR, "node.conf"), "w") as f:
        json.dump({"Peers": [], "FileInfo": info}, f)
    with open(os.path.join(SWARM_DIR, "expected.sha1"), "w") as f:
        f.write(digest.hexdigest())
    return digest.hexdigest()


# -- display -------------------------------------------------------------------------------------
def render(statuses, started=None):
    table = Table(show_edge=False, pad_edge=False, expand=False)
    for col in ("node", "progress", "pieces", "%", "in MB", "out MB", "peers", "done after"):
        table.add_column(col, justify="left" if col in ("node", "progress") else "right")
    for name, st in statuses.items():
        if st is None:
            table.add_row(short(name), "[dim]starting…", "", "", "", "", "", "")
            continue
        pct = st["percent"]
        done = st["complete_after_s"]
        table.add_row(short(name), ProgressBar(total=100, completed=pct, width=30),
                      f"{st['have']}/{st['pieces']}", f"{pct:.1f}", f"{st['bytes_in'] / 1e6:.1f}",
                      f"{st['bytes_out'] / 1e6:.1f}", str(st["peers_connected"]),
                      f"{done:.2f}s" if done is not None else "")
    if started is not None:
        table.caption = f"{time.monotonic() - started:.1f}s since start"
    return table


def verify(nodes, expected, pool):
    def one(nc):
        r = subprocess.run(["docker", "exec", nc[1], "sha1sum", "/data.bin"], capture_output=True, text=True)
        return nc[0], (r.stdout.split() or ["?"])[0]
    return [(name, got == expected) for name, got in pool.map(one, nodes)]


def summary(statuses, wall, size):
    table = render(statuses)
    moved = sum(st["bytes_in"] for st in statuses.values() if st)
    table.caption = (f"{len(statuses)} nodes verified · {size / 1e6:.1f} MB file · last node done "
                     f"{wall:.2f}s after the swarm started · {moved / 1e6:.1f} MB moved · "
                     f"{moved / 1e6 / max(wall, 1e-9):.1f} MB/s aggregate")
    return table


# -- commands ------------------------------------------------------------------------------------
def cmd_up(args):
    size, piece = parse_size(args.size), parse_size(args.piece)
    if args.n < 2:
        sys.exit("local-swarm: N must be at least 2")
    expected = write_inputs(size, piece, args.seed)
    compose("down", "--remove-orphans", capture_output=True, check=False)
    console.print(f"[bold]local swarm[/]: {args.n} nodes, {size / 1e6:.1f} MB file, "
                  f"{piece} B pieces, sha1 {expected[:12]}…")
    compose("up", "-d", "--scale", f"node={args.n - 1}", capture_output=True)
    started = time.monotonic()
    signal.signal(signal.SIGINT, lambda *_: _interrupted())
    nodes = []
    with ThreadPoolExecutor(max_workers=16) as pool, Live(console=console, refresh_per_second=4) as live:
        while True:
            nodes = containers()
            statuses = gather(nodes, pool)
            live.update(render(statuses, started))
            if len(nodes) == args.n and all(st and st["complete"] for st in statuses.values()):
                break
            if time.monotonic() - started > args.timeout:
                live.stop()
                console.print(f"[red]local-swarm: not every node completed within {args.timeout}s[/];"
                              " see `make logs`; the swarm is left running (`make swarm-down`).")
                return 1
            time.sleep(POLL_S)
        wall = max(st["complete_after_s"] or 0 for st in statuses.values())
        checks = verify(nodes, expected, pool)
        live.update(summary(statuses, wall, size))
    bad = [short(n) for n, ok in checks if not ok]
    if bad:
        console.print(f"[red]digest mismatch on {', '.join(bad)}[/]")
        return 1
    console.print(f"[green]all {len(checks)} files verified by sha1[/]; the swarm keeps seeding: "
                  "`make status`, `make logs`, `make swarm-down`.")
    return 0


def _interrupted():
    console.print("\n[yellow]interrupted: tearing the swarm down[/]")
    compose("down", "--remove-orphans", "-t", "2", capture_output=True, check=False)
    sys.exit(130)


def cmd_status(args):
    nodes = containers()
    if not nodes:
        console.print("no local swarm is running (`make local-swarm N=10`)")
        return 1
    with ThreadPoolExecutor(max_workers=16) as pool:
        console.print(render(gather(nodes, pool)))
    return 0


def cmd_logs(args):
    cmd = compose_cmd() + ["-p", PROJECT, "-f", COMPOSE_FILE, "logs", "--no-color"]
    if args.follow:
        cmd.append("-f")
    if args.node:
        cmd += [s for s in ("seeder", "node") if args.node.startswith(s)][:1]
    env = dict(os.environ, SWARM_DIR=SWARM_DIR)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    levels = ("debug", "info", "warning", "error")
    keep = levels[levels.index(args.level):] if args.level else levels
    try:
        for line in proc.stdout:
            if args.node and short(line.split("|")[0].strip()) != args.node and args.node not in ("seeder", "node"):
                continue
            if any(f"level={lv}" in line for lv in keep) or "level=" not in line:
                sys.stdout.write(line)
    except KeyboardInterrupt:
        pass
    finally:
        proc.terminate()
    return 0


def cmd_down(args):
    compose("down", "--remove-orphans", "-t", "2", check=False)
    return 0


def main(argv):
    p = argparse.ArgumentParser(prog="local_swarm", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--n", type=int, default=10)
    up.add_argument("--size", default="64M")
    up.add_argument("--piece", default="256K")
    up.add_argument("--seed", type=int, default=int(time.time()))
    up.add_argument("--timeout", type=float, default=60.0)
    sub.add_parser("status")
    logs = sub.add_parser("logs")
    logs.add_argument("--level", choices=("debug", "info", "warning", "error"))
    logs.add_argument("--node", help="e.g. seeder, node-3")
    logs.add_argument("--no-follow", dest="follow", action="store_false")
    sub.add_parser("down")
    args = p.parse_args(argv)
    return {"up": cmd_up, "status": cmd_status, "logs": cmd_logs, "down": cmd_down}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
