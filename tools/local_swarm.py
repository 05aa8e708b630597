"""`make local-swarm N=10` and friends: run a swarm of containers with compose and watch it sync.

up      generate a random file and its torrent.conf, start one seeder and N-1 replicas (no file,
        no peers: they find each other by self-discovery), show live progress per node, verify
        every node's file by digest, print a summary, and leave the swarm running (seeding).
status  the same table, once, for a running swarm.
logs    follow every node's log, prefixed by node; filter by level or node.
down    stop and remove the swarm.

Rule: all Docker access goes through the docker and compose CLIs (v2 `docker compose` or v1
`docker-compose`). The live display reads the nodes' own log lines from one `compose logs -f`
stream (no polling: on a small machine, a `docker exec` per node per second would slow the very
swarm it measures); `status` asks each node with `python3 -m node status` inside its container.
"""

import argparse
import calendar
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from rich import box
from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE_FILE = os.path.join(ROOT, "swarm", "compose.yml")
COMPOSE_TLS_FILE = os.path.join(ROOT, "swarm", "compose.tls.yml")  # added with --tls: a closed swarm
PROJECT = "p2pswarm"
SWARM_DIR = os.path.join(ROOT, "tmp", "swarm")
REFRESH_S = 0.25  # how often the live display redraws
_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
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


def compose(*args, check=True, tls=False, **kw):
    env = dict(os.environ, SWARM_DIR=SWARM_DIR)
    files = ["-f", COMPOSE_FILE] + (["-f", COMPOSE_TLS_FILE] if tls else [])
    cmd = compose_cmd() + ["-p", PROJECT, *files, *args]
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
    return dict(zip([short(n) for n, _ in nodes], pool.map(lambda nc: _safe_status(nc[1]), nodes)))


def _safe_status(cid):
    try:
        return node_status(cid)
    except (subprocess.TimeoutExpired, ValueError):
        return None


# -- watching the swarm through its logs ---------------------------------------------------------
def parse_logfmt(text):
    return {k: v[1:-1] if v.startswith('"') else v for k, v in _KV.findall(text)}


def parse_ts(ts):
    """'2026-11-21T11:09:34.897Z' -> seconds since the epoch."""
    return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + ts[19:-1])


class SwarmWatch:
    """Follows `compose logs -f` and keeps, per container, its latest progress and history."""

    def __init__(self):
        self.nodes = {}  # container name -> dict
        self._lock = threading.Lock()
        self._proc = None

    def start(self):
        cmd = compose_cmd() + ["-p", PROJECT, "-f", COMPOSE_FILE, "logs", "-f", "--no-color"]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                      env=dict(os.environ, SWARM_DIR=SWARM_DIR))
        threading.Thread(target=self._read, daemon=True).start()

    def stop(self):
        if self._proc:
            self._proc.terminate()
            self._proc.wait()

    def _read(self):
        for line in self._proc.stdout:
            name, sep, rest = line.partition("|")
            if sep:
                self.feed(short(name.strip()), parse_logfmt(rest))

    def feed(self, name, f):
        event, ts = f.get("event"), f.get("ts")
        if not event or not ts:
            return
        with self._lock:
            n = self.nodes.setdefault(name, {"have": 0, "pieces": 0, "bytes_in": 0, "bytes_out": 0,
                                             "rate": 0.0, "peers": 0, "started_at": None,
                                             "done_at": None, "history": []})
            t = parse_ts(ts)
            if event == "listening":
                n["started_at"] = t
                return
            if event == "file_info" and "pieces" in f:
                n["pieces"] = int(f["pieces"])
            elif event == "scan_done":
                n["have"] = int(f["have"])
            elif event == "progress" and "have" in f:
                have, pieces = f["have"].split("/")
                n.update(have=int(have), pieces=int(pieces), bytes_in=int(f.get("bytes_in", 0)),
                         bytes_out=int(f.get("bytes_out", 0)), peers=int(f.get("peers", 0)),
                         rate=float(f.get("rate_mbs", 0)))
            elif event == "complete":
                n.update(have=int(f["pieces"]), pieces=int(f["pieces"]), bytes_in=int(f["bytes_in"]),
                         done_at=n["done_at"] or t, rate=0.0)
            else:
                return
            n["history"].append((t, n["have"]))

    def snapshot(self):
        with self._lock:
            return {k: dict(v, history=list(v["history"])) for k, v in self.nodes.items()}


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
# The last column of a table, and the legend under it. Both tables once said "done", in two
# meanings; now each says which clock it reads.
DONE_AT = ("done at", "done at: seconds from the first node's start to this node's last piece")
TOOK = ("took", "took: seconds from this node's own start (or restart) to its last piece")


def render(rows, caption=None, done=DONE_AT):
    """rows: name -> dict(have, pieces, bytes_in, bytes_out, peers, done) (done: seconds or None);
    done: (column header, legend) saying what the seconds count from."""
    header, legend = done
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                  expand=False, caption="\n".join(filter(None, [caption, legend])))
    widths = {"progress": 12, "pieces": 9}  # never squeezed: rich shrinks other columns first
    for col in ("node", "progress", "pieces", "%", "MB/s", "in MB", "out MB", "peers", header):
        table.add_column(col, justify="left" if col in ("node", "progress") else "right",
                         min_width=widths.get(col), no_wrap=True)
    for name, r in sorted(rows.items(), key=lambda kv: (0 if "seeder" in kv[0] else 1, _replica_number(kv[0]))):
        if r is None:
            table.add_row(short(name), "[dim]starting…", "", "", "", "", "", "", "")
            continue
        pct = 100.0 * r["have"] / r["pieces"] if r["pieces"] else 0.0
        table.add_row(short(name), ProgressBar(total=100, completed=pct, width=12),
                      f"{r['have']}/{r['pieces']}", f"{pct:.1f}",
                      f"{r['rate']:.0f}" if r.get("rate") else "", f"{r['bytes_in'] / 1e6:.1f}",
                      f"{r['bytes_out'] / 1e6:.1f}", str(r["peers"]),
                      f"{r['done']:.2f}s" if r.get("done") is not None else "")
    return table


def watch_rows(snapshot, t0):
    return {name: dict(n, done=(n["done_at"] - t0) if n["done_at"] else None) for name, n in snapshot.items()}


def first_start(snapshot, default):
    """When the first node started listening: the swarm's time zero (compose's own start-up of
    the containers comes before it and is not the nodes' doing)."""
    return min((n["started_at"] for n in snapshot.values() if n["started_at"]), default=default)


def status_rows(statuses):
    return {name: st and {"have": st["have"], "pieces": st["pieces"], "bytes_in": st["bytes_in"],
                          "bytes_out": st["bytes_out"], "peers": st["peers_connected"],
                          "rate": st["rate_in_mbs"], "done": st["complete_after_s"]}
            for name, st in statuses.items()}


def verify(nodes, expected, pool):
    def one(nc):
        r = subprocess.run(["docker", "exec", nc[1], "sha1sum", "/data.bin"], capture_output=True, text=True)
        return nc[0], (r.stdout.split() or ["?"])[0]
    return [(name, got == expected) for name, got in pool.map(one, nodes)]


def summary(rows, size, up_s):
    wall = max(r["done"] for r in rows.values())
    moved = sum(r["bytes_in"] for r in rows.values())
    return render(rows, f"{len(rows)} nodes verified · {size / 1e6:.1f} MB file · last node done "
                        f"{wall:.2f}s after the first node started (compose took {up_s:.1f}s to "
                        f"start them) · {moved / 1e6:.1f} MB moved · "
                        f"{moved / 1e6 / max(wall, 1e-9):.1f} MB/s aggregate")


# -- commands ------------------------------------------------------------------------------------
def cmd_up(args):
    size, piece = parse_size(args.size), parse_size(args.piece)
    if args.n < 2:
        sys.exit("local-swarm: N must be at least 2")
    expected = write_inputs(size, piece, args.seed)
    compose("down", "--remove-orphans", "-t", "2", capture_output=True, check=False)
    if args.tls:  # a CA and the member certificate every node mounts (swarm/compose.tls.yml)
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "certs.sh"), os.path.join(SWARM_DIR, "certs")],
                       check=True, capture_output=True)
    console.print(f"[bold]local swarm[/]: {args.n} nodes, {size / 1e6:.1f} MB file, "
                  f"{piece} B pieces, sha1 {expected[:12]}…{', mutual TLS' if args.tls else ''}")
    t_up = time.time()
    compose("up", "-d", "--scale", f"node={args.n - 1}", capture_output=True, tls=args.tls)
    signal.signal(signal.SIGINT, lambda *_: _interrupted())
    watch = SwarmWatch()
    watch.start()
    try:
        rows = _follow(watch, args, t_up)
    finally:
        watch.stop()
    t0 = first_start(watch.snapshot(), t_up)
    if rows is None:
        console.print(f"[red]local-swarm: not every node completed within {args.timeout:.0f}s[/];"
                      " see `make logs`; the swarm is left running (`make swarm-down`).")
        return 1
    nodes = containers()
    with ThreadPoolExecutor(max_workers=16) as pool:
        checks = verify(nodes, expected, pool)
        final = status_rows(gather(nodes, pool))
    rows = watch_rows(watch.snapshot(), t0)
    for name, r in final.items():  # bytes out as of now; completion times as the logs saw them
        if r and name in rows:
            rows[name]["bytes_out"] = r["bytes_out"]
    console.print(summary(rows, size, t0 - t_up))
    if args.chart:
        write_chart(watch.snapshot(), t0, args.chart, f"{args.n} nodes, {size / 1e6:.0f} MB, {piece} B pieces")
        console.print(f"chart: {args.chart}")
    bad = [short(n) for n, ok in checks if not ok]
    if bad or len(checks) != args.n:
        console.print(f"[red]digest mismatch on {', '.join(bad) or 'missing nodes'}[/]")
        return 1
    console.print(f"[green]all {len(checks)} files verified by sha1[/]; the swarm keeps seeding: "
                  "`make status`, `make logs`, `make swarm-down`.")
    return 0


def _follow(watch, args, t_up):
    """Live display until every node has completed (returns its rows) or the timeout (None)."""
    with Live(console=console, refresh_per_second=8, transient=True) as live:
        while True:
            snap = watch.snapshot()
            t0 = first_start(snap, t_up)
            rows = watch_rows(snap, t0)
            live.update(render(rows, f"{time.time() - t0:.1f}s since the first node started"))
            if len(rows) == args.n and all(r["done"] is not None for r in rows.values()):
                return rows
            if time.time() - t_up > args.timeout:
                return None
            time.sleep(REFRESH_S)


def write_chart(snapshot, t0, path, title):
    """PNG of pieces held over time, one line per node."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, n in sorted(snapshot.items(), key=lambda kv: (0 if "seeder" in kv[0] else 1, _replica_number(kv[0]))):
        pts = [(0.0, 0)] + [(t - t0, h) for t, h in n["history"]]
        ax.step([p[0] for p in pts], [100.0 * p[1] / max(1, n["pieces"]) for p in pts], where="post",
                label=short(name), linewidth=1.4)
    ax.set_xlabel("seconds since the first node started")
    ax.set_ylabel("% of pieces held")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)


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
        console.print(render(status_rows(gather(nodes, pool)), done=TOOK))
    return 0


def cmd_logs(args):
    """Every node's log, prefixed by node; --node keeps one node, --level that level and above."""
    service = args.node.split("-")[0] if args.node else None  # node-3 -> service "node"
    cmd = compose_cmd() + ["-p", PROJECT, "-f", COMPOSE_FILE, "logs", "--no-color"]
    cmd += (["-f"] if args.follow else []) + ([service] if service else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ, SWARM_DIR=SWARM_DIR))
    levels = ("debug", "info", "warning", "error")
    shown = {f"level={lv}" for lv in levels[levels.index(args.level or "debug"):]}
    try:
        for line in proc.stdout:
            prefix, sep, rest = line.partition("|")
            if not sep:
                continue  # compose's own chatter ("Attaching to ...")
            if args.node and short(prefix.strip()) != args.node:
                continue
            if any(level in rest for level in shown):
                sys.stdout.write(f"{short(prefix.strip()):>9} |{rest}")
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
    up.add_argument("--chart", help="also write a PNG of pieces held over time to this path")
    up.add_argument("--tls", action="store_true", help="a closed swarm: mutual TLS with a fresh CA")
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
