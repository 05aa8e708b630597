"""Race: our image against the naive reference node (bench/naive/) in the grader's own setting.

    python3 bench/race.py [--layouts many-source,wide] [--impl ours,naive] [--runs 3] [--seed 1]
                          [--out bench/out/race] [--ours-image p2p-node:latest]
    python3 bench/race.py --cleanup-stale        # leftovers of a SIGKILLed run (p2pr-*)

What lives here: the layouts, one timed run (start, watch, confirm, collect, clean up), the order of
runs and the table. A benchmark, not a test; it needs root (it reads the engine's json-file logs
and the cgroups' CPU counters) and Docker. Hold the machine lock: `flock /tmp/p2p-heavy.lock ...`.

One run, as the grader does it: an `--internal` network of its own; every container started with
`docker run -d --network NET -v conf -v data IMAGE`, ONE AFTER ANOTHER (each `docker run` returns
before the next begins), in a seeded order; the clock starts when the last `docker run` returns
(T0) and stops when every container's /data.bin is correct.

"Correct" is judged the same way for both images, from the file the container sees: every
/data.bin is a bind mount of a host file, so the watcher compares that file with the correct one,
byte for byte, whenever the node logs `event=complete` or the file has stopped changing for
STABLE_S at the right size. Afterwards every container's /data.bin is hashed from inside it
(`docker exec sh -c 'sha1sum /data.bin'`); a digest that disagrees fails the run. The clock is not
run on `docker exec` polls because one exec costs ~55 ms of CPU on this 2-core machine (measured:
20 execs, 5.5 of 11.25 jiffies each): confirming 60 containers would add ~3 s of CPU to a race the
naive node runs in ~1 s, and the polls would compete with the nodes for the same cores.

Recorded per node (host wall clock; the engine timestamps each log line as it reads it):
`docker run` call -> process started (State.StartedAt) -> `event=listening` -> file correct, the
CPU its cgroup used up to listening and in all, and the host's CPU use during the starts and
after T0. Each run's whole record is written to OUT/runs/RUNID.json, one line per run to
OUT/race.jsonl, and the table to OUT/race.md.
"""

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from tests.swarm import docker_cli as dc  # noqa: E402
from tests.swarm.content import Content, materialize, write_master  # noqa: E402
from tests.swarm.harness import signals_deferred  # noqa: E402
from tests.swarm.plan import ip_of, render_conf  # noqa: E402
from tests.swarm.scenarios import _full_peers, make_plan  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
LABEL_KEY = "p2p-race"
NAME_PREFIX = "p2pr"
IMAGES = {"ours": "p2p-node:latest", "naive": "p2p-naive:latest"}
# The layouts: many-source 11 x 13.8 MB in 73 KB pieces; simple-extra widened to 60 nodes
# x 4.6 MB, full conf everywhere (the naive node needs it). Piece counts: 190 and 74.
LAYOUTS = {
    "many-source": dict(scenario="many-source", nodes=11, size=int(13.8 * MiB), piece=73 * KiB),
    "wide": dict(scenario="simple-extra", nodes=60, size=int(4.6 * MiB), piece=64 * KiB),
}
DEADLINE_S = 60.0  # T0 -> all correct; both images need ~1-5 s, the SPEC's timeouts are 30-60 s
WATCH_TICK_S = 0.01  # how often the watcher reads new log lines, stats files and samples CPU
STABLE_S = 0.03  # a right-sized file unchanged this long is compared even without a log line
CONFIRM_WORKERS = 4  # parallel `docker exec sha1sum` after the clock stopped
CPUACCT = "/sys/fs/cgroup/cpuacct/docker/{}/cpuacct.usage"  # cgroup v1, cgroupfs driver (ns)
CONTAINER_LOG = "/var/lib/docker/containers/{0}/{0}-json.log"  # json-file driver
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_S = 3.0  # pause between runs: the previous run's removals finish in the engine


# ---- layouts ---------------------------------------------------------------------------------
def make_layout(name, seed):
    """The seeded plan of layout NAME: tests/swarm's generator, every node with a bind-mounted
    /data.bin ("missing" becomes "empty", as `-v` always gives the grader's nodes a file), and for
    "wide" a full conf on every node (the generator empties some Peers; the naive node needs all)."""
    spec = LAYOUTS[name]
    plan = make_plan(spec["scenario"], seed, nodes=spec["nodes"], size=spec["size"],
                     piece=spec["piece"])
    rng = random.Random(f"race:{name}:{seed}")
    for node in plan.nodes:
        if node.content.kind == "missing":
            node.content = Content("empty")
        node.delivery = "bind"
        if node.peers_form != "list" or not node.peers:
            node.peers, node.peers_form = _full_peers(rng, len(plan.nodes), node.index), "list"
        node.fileinfo_form = "full"
    plan.order = rng.sample(range(len(plan.nodes)), len(plan.nodes))  # the start order
    return plan


# ---- small readers -----------------------------------------------------------------------------
def host_cpu():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def cgroup_cpu(cid):
    """CPU seconds container CID has used so far, or None once it is gone."""
    try:
        with open(CPUACCT.format(cid)) as f:
            return int(f.read()) / 1e9
    except OSError:
        return None


def parse_stamp(text):
    """RFC 3339 with nanoseconds (the engine's) -> epoch seconds."""
    text = text.rstrip("Z")
    if "." in text:
        head, frac = text.split(".")
        text = f"{head}.{frac[:6]}"
    return datetime.datetime.fromisoformat(text).replace(
        tzinfo=datetime.timezone.utc).timestamp()


def busy_share(a, b):
    """The machine's CPU use between two host_cpu() samples, in cores (2.0 = both busy)."""
    busy, total = b[0] - a[0], b[1] - a[1]
    return round(busy / total * os.cpu_count(), 2) if total else None


# ---- one container as the watcher sees it ----------------------------------------------------
class Box:
    """One container: its file, its log and what the watcher learned of them. Files stay open
    and are re-read with pread/fstat: a tick over 60 containers costs ~1 ms of CPU, not ~5."""

    def __init__(self, index, name, data_path):
        self.index, self.name, self.data_path = index, name, data_path
        self.cid, self.run_begin, self.run_end = None, None, None
        self.data_fd = os.open(data_path, os.O_RDONLY)  # the inode the node writes in place
        self.log_fd, self.cpu_fd, self.log_rest = None, None, b""
        self.events = {}  # event name -> engine timestamp of its first line
        self.file_key, self.changed_at, self.compared_key = None, None, None
        self.correct_at = None
        self.cpu = []  # (host time, cgroup CPU seconds) samples

    def close(self):
        for fd in (self.data_fd, self.log_fd, self.cpu_fd):
            if fd is not None:
                os.close(fd)
        self.data_fd = self.log_fd = self.cpu_fd = None

    def _open(self):
        if self.log_fd is None:
            self.log_fd = os.open(CONTAINER_LOG.format(self.cid), os.O_RDONLY)
        if self.cpu_fd is None:
            self.cpu_fd = os.open(CPUACCT.format(self.cid), os.O_RDONLY)

    def sample(self, now):
        """Read new log lines and the cgroup's CPU counter (nothing if not there yet)."""
        try:
            self._open()
            self.cpu.append((now, int(os.pread(self.cpu_fd, 64, 0)) / 1e9))
        except (OSError, ValueError):
            pass
        if self.log_fd is not None:
            self.read_log()

    def read_log(self):
        """Record the first `event=listening` / `event=complete` lines logged since last time."""
        chunk = b""
        while True:
            part = os.read(self.log_fd, 1 << 16)
            if not part:
                break
            chunk += part
        if not chunk:
            return
        lines = (self.log_rest + chunk).split(b"\n")
        self.log_rest = lines.pop()
        for raw in lines:
            entry = json.loads(raw)
            for event in ("listening", "complete"):
                if f"event={event}" in entry["log"] and event not in self.events:
                    self.events[event] = parse_stamp(entry["time"])

    def check_file(self, master, now):
        """Compare the file with MASTER when the node says it is complete, or when it has stopped
        changing at the right size; each (size, mtime) is compared at most once."""
        st = os.fstat(self.data_fd)
        key = (st.st_size, st.st_mtime_ns)
        if key != self.file_key:
            self.file_key, self.changed_at = key, now
        due = "complete" in self.events or (
            st.st_size == len(master) and now - self.changed_at >= STABLE_S)
        if due and key != self.compared_key:
            self.compared_key = key
            if os.pread(self.data_fd, len(master) + 1, 0) == master:
                self.correct_at = time.time()


class Watcher(threading.Thread):
    """Follows every started container until all files are correct or it is stopped."""

    def __init__(self, boxes, master):
        super().__init__(daemon=True, name="race-watcher")
        self.boxes, self.master = boxes, master
        self.stop = threading.Event()
        self.all_correct = threading.Event()
        self.host = []  # (host time, host_cpu()) samples
        self.cpu_s = 0.0  # the watcher's own CPU time: what it took from the nodes

    def run(self):
        while not self.stop.is_set():
            now = time.time()
            self.host.append((now, host_cpu()))
            live = [b for b in self.boxes if b.cid]
            for box in live:
                box.sample(now)
                if box.correct_at is None:
                    box.check_file(self.master, now)
            if len(live) == len(self.boxes) and all(b.correct_at for b in live):
                self.all_correct.set()
            self.cpu_s = time.thread_time()
            self.stop.wait(WATCH_TICK_S)


# ---- one timed run ---------------------------------------------------------------------------
class Race:
    """One run of PLAN with IMAGE; `execute()` returns the run's record and always cleans up."""

    def __init__(self, layout, plan, impl, image, out, env=()):
        self.layout, self.plan, self.impl, self.image, self.out = layout, plan, impl, image, out
        self.env = list(env)
        self.runid = uuid.uuid4().hex[:8]
        self.net = f"{NAME_PREFIX}-{self.runid}"
        self.label = f"{LABEL_KEY}={self.runid}"
        self.names = [f"{self.net}-{n.index}" for n in plan.nodes]
        self.tmp, self.prefix, self.info, self.master = None, None, None, None
        self.boxes, self.watcher, self.t0, self.cpu_t0 = [], None, None, None

    def execute(self):
        record = dict(layout=self.layout, impl=self.impl, image=self.image, seed=self.plan.seed,
                      runid=self.runid, nodes=len(self.plan.nodes), size=self.plan.size,
                      piece=self.plan.piece, failures=[])
        try:
            self._prepare()
            self._start_all(record)
            self._wait(record)
            self._confirm(record)
            self._collect(record)
        except dc.DockerError as exc:
            record["failures"].append(f"docker: {exc}")
        finally:
            self._teardown()
        return record

    def _prepare(self):
        self.tmp = tempfile.mkdtemp(prefix=f"{self.net}-", dir="/var/tmp")
        path = os.path.join(self.tmp, "master.bin")
        self.info = write_master(path, self.plan.size, self.plan.piece,
                                 seed=f"data:{self.plan.seed}")
        with open(path, "rb") as f:
            self.master = f.read()
        self.prefix = dc.create_network(self.net, self.label)
        for node, name in zip(self.plan.nodes, self.names):
            data = materialize(node.content, path, self.info,
                               os.path.join(self.tmp, f"data-{node.index}.bin"),
                               seed=f"garbage:{self.plan.seed}:{node.index}")
            with open(os.path.join(self.tmp, f"torrent-{node.index}.conf"), "w") as fh:
                json.dump(render_conf(self.plan, node, self.prefix, self.info.conf()), fh)
            self.boxes.append(Box(node.index, name, data))
        os.sync()  # no writeback of the prepared files during the timing

    def _run_args(self, box):
        node = self.plan.nodes[box.index]
        return ["run", "-d", "--name", box.name, "--label", self.label, "--network", self.net,
                "--ip", ip_of(self.prefix, node),
                "-v", f"{os.path.join(self.tmp, f'torrent-{box.index}.conf')}:/torrent.conf:ro",
                "-v", f"{box.data_path}:/data.bin",
                *[a for kv in self.env for a in ("-e", kv)], self.image]

    def _start_all(self, record):
        self.watcher = Watcher(self.boxes, self.master)
        self.watcher.start()
        cpu_first = host_cpu()
        for i in self.plan.order:
            box = self.boxes[i]
            box.run_begin = time.time()
            box.cid = dc.docker(*self._run_args(box)).stdout.strip()
            box.run_end = time.time()
        self.t0 = self.boxes[self.plan.order[-1]].run_end
        self.cpu_t0 = host_cpu()
        record["start_spread_s"] = round(self.t0 - self.boxes[self.plan.order[0]].run_begin, 2)
        record["cores_busy_starting"] = busy_share(cpu_first, self.cpu_t0)

    def _wait(self, record):
        ok = self.watcher.all_correct.wait(max(0.0, self.t0 + DEADLINE_S - time.time()))
        self.watcher.stop.set()
        self.watcher.join(5)
        record["cores_busy_after_t0"] = busy_share(self.cpu_t0, host_cpu())
        if not ok:
            late = [b.name for b in self.boxes if not b.correct_at]
            record["failures"].append(f"not correct {DEADLINE_S:.0f}s after T0: {late}")
            return
        t_all = max(b.correct_at for b in self.boxes)
        record["correct_s"] = round(t_all - self.t0, 3)

    def _confirm(self, record):
        """Every container's /data.bin, hashed from inside it, must be the correct file."""
        def digest(box):
            proc = dc.docker("exec", box.name, "sh", "-c", "sha1sum /data.bin", check=False,
                             timeout=dc.BULK_TIMEOUT_S)
            return proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout else proc.stderr
        with ThreadPoolExecutor(CONFIRM_WORKERS) as pool:
            got = dict(zip(self.names, pool.map(digest, self.boxes)))
        for name, sha in got.items():
            if sha != self.info.sha1:
                record["failures"].append(f"{name}: /data.bin sha1 {sha!r} != {self.info.sha1}")

    def _collect(self, record):
        """Per node: docker run -> started -> listening -> correct, CPU; from inspect and logs."""
        fmt = "{{.Name}} {{.State.StartedAt}}"
        started = {}
        for line in dc.docker("inspect", "-f", fmt, *self.names,
                              timeout=dc.BULK_TIMEOUT_S).stdout.splitlines():
            name, stamp = line.split()
            started[name.lstrip("/")] = parse_stamp(stamp)
        for box in self.boxes:
            if box.log_fd is not None:
                box.read_log()
        nodes = []
        for pos, i in enumerate(self.plan.order):
            nodes.append(self._node_record(pos, self.boxes[i], started.get(self.boxes[i].name)))
        record["nodes"] = nodes
        logged = [n["complete_at"] for n in nodes]
        if all(t is not None for t in logged):  # a node may log after its file is correct
            record["logged_complete_s"] = max(logged)
        listening = [n["listening_at"] for n in nodes if n["listening_at"] is not None]
        if len(listening) == len(nodes):
            record["last_listening_s"] = round(max(listening), 3)
        record["cpu_nodes_s"] = round(sum(n["cpu_s"] or 0 for n in nodes), 2)
        record["watcher_cpu_s"] = round(self.watcher.cpu_s, 3)
        record["host"] = [(round(t - self.t0, 3), c) for t, c in self.watcher.host]

    def _node_record(self, pos, box, started):
        rel = (lambda t: None if t is None else round(t - self.t0, 3))
        listening = box.events.get("listening")
        cpu_listen = next((c for t, c in box.cpu if listening and t >= listening and c), None)
        cpu_all = next((c for t, c in reversed(box.cpu) if c is not None), None)
        node = self.plan.nodes[box.index]
        return dict(pos=pos, name=box.name, content=node.content.describe(self.plan.n_pieces),
                    run_begin=rel(box.run_begin), run_end=rel(box.run_end),
                    started=rel(started), listening_at=rel(listening),
                    complete_at=rel(box.events.get("complete")), correct_at=rel(box.correct_at),
                    run_call_s=round(box.run_end - box.run_begin, 3),
                    run_to_listening_s=None if listening is None else round(
                        listening - box.run_begin, 3),
                    cpu_to_listening_s=None if cpu_listen is None else round(cpu_listen, 3),
                    cpu_s=None if cpu_all is None else round(cpu_all, 3))

    def _teardown(self):
        with signals_deferred():
            if self.watcher:
                self.watcher.stop.set()
            try:
                if self.out and self.boxes and any(b.cid for b in self.boxes):
                    self._save_logs()
            finally:
                dc.remove_containers(self.names)
                dc.remove_labelled(self.label)
                if not dc.remove_network(self.net):
                    dc.remove_labelled(self.label)
                    dc.remove_network(self.net)
                for box in self.boxes:
                    box.close()
                if self.tmp:
                    shutil.rmtree(self.tmp, ignore_errors=True)

    def _save_logs(self):
        where = os.path.join(self.out, "logs", f"{self.layout}-{self.impl}-{self.runid}")
        os.makedirs(where, exist_ok=True)
        for box in self.boxes:
            if box.cid:
                with open(os.path.join(where, f"{box.name}.log"), "w") as f:
                    f.write(dc.logs_tail(box.name, "all") + "\n")


# ---- the order of runs and the table ---------------------------------------------------------
def fmt_range(values):
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


def summarize(records):
    """Markdown table: per layout and image, median (min-max) over the runs; the last node's
    phases are measured from T0 (its `docker run` returning)."""
    rows = ["| layout | image | runs | all correct (s from T0) | last node: docker run call | "
            "last node: T0 -> listening | last node: listening -> correct | CPU of all nodes (s) "
            "| cores busy: starting / after T0 |",
            "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["layout"], r["impl"]) for r in records})
    for layout, impl in keys:
        rs = [r for r in records if (r["layout"], r["impl"]) == (layout, impl)]
        ok = [r for r in rs if not r["failures"] and r.get("nodes")]
        last = [r["nodes"][-1] for r in ok]
        busy = (f"{fmt_range([r['cores_busy_starting'] for r in ok])} / "
                f"{fmt_range([r['cores_busy_after_t0'] for r in ok])}")
        rows.append(
            f"| {layout} | {impl} | {len(ok)}/{len(rs)} | "
            f"{fmt_range([r['correct_s'] for r in ok])} | "
            f"{fmt_range([n['run_call_s'] for n in last])} | "
            f"{fmt_range([n['listening_at'] for n in last if n['listening_at'] is not None])} | "
            f"{fmt_range([n['correct_at'] - n['listening_at'] for n in last if n['listening_at'] is not None])} | "
            f"{fmt_range([r['cpu_nodes_s'] for r in ok])} | {busy} |")
    return "\n".join(rows)


def run_line(r):
    if r["failures"]:
        return f"{r['layout']:<12} {r['impl']:<6} seed={r['seed']} FAIL: {r['failures'][0][:300]}"
    return (f"{r['layout']:<12} {r['impl']:<6} seed={r['seed']} run={r['runid']} "
            f"correct={r['correct_s']:.2f}s logged={r.get('logged_complete_s', '-')}s "
            f"last_listening={r.get('last_listening_s', '-')}s starts={r['start_spread_s']}s "
            f"busy={r['cores_busy_starting']}/{r['cores_busy_after_t0']} "
            f"cpu_nodes={r['cpu_nodes_s']}s")


def cleanup_stale():
    names = dc.docker("ps", "-aq", "--filter", f"label={LABEL_KEY}").stdout.split()
    dc.remove_containers(names)
    nets = [n for n in dc.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
            if n.startswith(f"{NAME_PREFIX}-")]
    for net in nets:
        dc.remove_network(net)
    print(f"removed {len(names)} containers, {len(nets)} networks")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layouts", default="many-source,wide")
    p.add_argument("--impl", default="ours,naive")
    p.add_argument("--runs", type=int, default=3, help="runs per layout and image")
    p.add_argument("--seed", type=int, default=1, help="run k of a layout uses seed SEED+k")
    p.add_argument("--ours-image", default=IMAGES["ours"])
    p.add_argument("--naive-image", default=IMAGES["naive"])
    p.add_argument("--out", default=os.path.join(HERE, "out", "race"))
    p.add_argument("--ours-env", action="append", default=[], metavar="KEY=VALUE",
                   help="diagnosis only, not what the grader does: -e KEY=VALUE for our nodes "
                        "(e.g. NODE_DISCOVERY=off); its runs are labelled ours+KEY=VALUE")
    p.add_argument("--cleanup-stale", action="store_true")
    return p.parse_args(argv)


def _sigterm(_signo, _frame):
    raise KeyboardInterrupt  # unwind through every run's cleanup


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    if args.cleanup_stale:
        cleanup_stale()
        return 0
    images = {"ours": args.ours_image, "naive": args.naive_image}
    impls, layouts = args.impl.split(","), args.layouts.split(",")
    for impl in impls:
        if not dc.image_exists(images[impl]):
            print(f"image {images[impl]} missing: make bench-race builds both", file=sys.stderr)
            return 2
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    records = []
    for k in range(args.runs):
        for layout in layouts:
            plan_seed = args.seed + k
            order = impls if k % 2 == 0 else impls[::-1]  # alternate who goes first
            for impl in order:
                plan = make_layout(layout, plan_seed)
                env = args.ours_env if impl == "ours" else []
                label = "+".join([impl, *env])
                r = Race(layout, plan, label, images[impl], args.out, env).execute()
                print(run_line(r), flush=True)
                records.append(r)
                with open(os.path.join(args.out, "runs", f"{r['runid']}.json"), "w") as f:
                    json.dump(r, f, indent=1)
                with open(os.path.join(args.out, "race.jsonl"), "a") as f:
                    f.write(json.dumps({k: v for k, v in r.items()
                                        if k not in ("nodes", "host")}) + "\n")
                time.sleep(SETTLE_S)
    table = summarize(records)
    print(table)
    with open(os.path.join(args.out, "race.md"), "a") as f:
        f.write(f"\n`{' '.join(sys.argv)}` ({time.strftime('%Y-%m-%d %H:%M')}, "
                f"load {os.getloadavg()[0]:.1f})\n\n{table}\n")
    return 0 if all(not r["failures"] for r in records) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the run's containers, network and files were removed",
              file=sys.stderr)
        sys.exit(130)
