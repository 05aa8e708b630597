"""The scale bench: hundreds of nodes on capped links, against the distribution-time floor (issue 15).

    python3 bench/scale.py [--scenarios W1,W2] [--impl ours,libtorrent] [--runs 1] [--append]
    python3 bench/scale.py --report-only          # re-render docs/bench-scale.md and the chart

What lives here: the W-scenario table, one timed run (per-node completion times, CPU busy share,
links, RSS, the uplinks' use over time), and the order of the runs. The lab and the caps: shape.py. Processes, start gates
and the barrier: run.py's, as the main bench uses them. Tables and charts: scale_report.py.

A run: one seeder (host 0) and N downloaders, every link capped (shape.py), each host's
torrent.conf listing the seeder and PEERS_PER_NODE random others. Hold the LAN, spawn all, wait
until each has stopped at its start gate, then T0: LAN on and SIGCONT. Each downloader's
completion time is taken from its `event=complete` line; the run ends when all completed. The
machine's CPU busy share over the timed span comes from /proc/stat (all processes, ours or not);
above MAX_BUSY the run is marked NOT VALID: it measured the CPU, not the links.
"""

import argparse
import calendar
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402
import scale_report  # noqa: E402
import scenarios  # noqa: E402
from scenarios import KiB, MiB, Seed  # noqa: E402
from shape import ScaleLab  # noqa: E402

ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(ROOT, "bench", "out", "scale-results.json")
PEERS_PER_NODE = 7  # besides the seeder: a tracker's random subset (the measurements)
MAX_BUSY = 0.5  # machine busy share above which a run is NOT VALID (issue 15)
LISTEN_TIMEOUT_S = 300  # spawn -> all listening: 500 interpreters on 2 cores take ~1 min
SYNC_FACTOR = 8  # give up at this many times T_min (plus SYNC_SLACK_S)
SYNC_SLACK_S = 60
STOP_WAIT_S = 20  # SIGTERM to every node at once, then this long for all to exit
NODE_MEM_MB = {"libtorrent": 50}  # a node's peak RSS at N = 300: libtorrent 36-49 MB...
NODE_MEM_MB_OURS = 36  # ...ours 30-34 MB
MEM_SPARE_MB = 4096  # left for page cache, the bench and the machine's other users
USE_SAMPLE_S = 1.0  # the bridge's port counters are read this often during a run...
USE_BIN_S = 5.0  # ...and reported as the uplinks' use per this long


@dataclass(frozen=True)
class WScenario:
    name: str
    n: int  # downloaders; the seeder is host 0 besides
    size: int
    piece: int
    mbit: float  # every host's upload and download cap
    seeder_mbit: float  # host 0's caps
    seed: int

    def t_min(self):
        """Kumar and Ross: max(F/U, F/d, N*F/(U + N*u)), seconds (caps in Mbit/s, F in bits)."""
        f, U, u = self.size * 8, self.seeder_mbit * 1e6, self.mbit * 1e6
        return max(f / U, f / u, self.n * f / (U + self.n * u))

    def describe(self):
        seeder = "" if self.seeder_mbit == self.mbit else f", seeder at {self.seeder_mbit:g} Mbit/s"
        return (f"1 seeder + {self.n} downloaders, {scenarios.human(self.size)} in "
                f"{scenarios.human(self.piece)} pieces, every link {self.mbit:g} Mbit/s{seeder}")


W_SCENARIOS = {s.name: s for s in (
    WScenario("W0", 10, 8 * MiB, 256 * KiB, 20, 20, 100),  # a smoke test of the bench (seconds)
    WScenario("W1", 30, 32 * MiB, 256 * KiB, 4, 4, 101),
    WScenario("W2", 100, 32 * MiB, 256 * KiB, 4, 4, 102),
    WScenario("W3", 300, 32 * MiB, 256 * KiB, 4, 4, 103),
    WScenario("W4", 500, 32 * MiB, 256 * KiB, 4, 4, 104),
    WScenario("W5", 100, 32 * MiB, 256 * KiB, 4, 40, 105),  # a seeder with a 10x faster link
    # 300 and 500 at a quarter of the rate and file: the machine stays under 50% busy
    WScenario("W6", 300, 8 * MiB, 64 * KiB, 1, 1, 106),
    WScenario("W7", 500, 8 * MiB, 64 * KiB, 1, 1, 107),
)}


def prepare(seed, ws, rundir, ips):
    """Host dirs: the seeder's full copy; every conf lists the seeder + PEERS_PER_NODE others."""
    rng = random.Random(ws.seed * 31)
    info = {"Size": ws.size, "PartSize": ws.piece, "Parts": seed.parts}
    paths = []
    for h in range(ws.n + 1):
        d = os.path.join(rundir, f"h{h}")
        os.makedirs(d)
        others = [i for i in range(1, ws.n + 1) if i != h]
        peers = rng.sample(others, min(PEERS_PER_NODE, len(others)))
        peers = ([] if h == 0 else [0]) + peers
        conf, data = os.path.join(d, "torrent.conf"), os.path.join(d, "data.bin")
        with open(conf, "w") as f:
            json.dump({"Peers": [ips[i] for i in peers], "FileInfo": info}, f)
        if h == 0:
            scenarios._copy(seed.path, data)
        paths.append((data, conf))
    return paths


def cpu_times():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]  # idle + iowait
    return sum(vals) - idle, sum(vals)


def _softirq():
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return vals[6], sum(vals)


def _softirq_share(a, b):
    """Share of the machine's time spent in softirq (packets through veth, bridge, tbf)."""
    return (b[0] - a[0]) / max(1, b[1] - a[1])


_CONNS = re.compile(r"event=peer_connected .*?conns=(\d+)")
_LT_PEERS = re.compile(r"event=progress .*?peers=(\d+)")
_DUP = re.compile(r"event=complete .*?dup_pieces=(\d+)")


def links(impl, lines):
    """(links this node saw open, most open at once) from its log."""
    if impl == "libtorrent":
        opened = sum(1 for ln in lines if "event=peer " in ln and "connect" in ln and "disconnect" not in ln)
        most = max((int(m.group(1)) for ln in lines if (m := _LT_PEERS.search(ln))), default=0)
        return opened, most
    counts = [int(m.group(1)) for ln in lines if (m := _CONNS.search(ln))]
    return len(counts), max(counts, default=0)


def dup_pieces(lines):
    return sum(int(m.group(1)) for ln in lines if (m := _DUP.search(ln)))


class UplinkUse(threading.Thread):
    """Reads what every host sent into the bridge (bytes on the wire, headers included) each
    USE_SAMPLE_S from T0 until stopped: how much of the swarm's upload capacity was in use
    when, for any implementation (the floor assumes every uplink busy from T0 to the end)."""

    def __init__(self, lab_, caps_mbit):
        super().__init__(daemon=True)
        self.lab, self.cap_bps = lab_, sum(caps_mbit) * 1e6 / 8
        self.seeder_cap_bps = caps_mbit[0] * 1e6 / 8
        self.samples = []  # (seconds since T0, bytes all hosts sent so far, bytes host 0 sent so far)
        self.halt = threading.Event()

    def run(self):
        t0 = time.monotonic()
        while True:
            self.sample(time.monotonic() - t0)
            if self.halt.wait(USE_SAMPLE_S):
                return

    def sample(self, t):
        ports = self.lab.port_counters("bytes")
        self.samples.append((t, sum(up for up, _ in ports.values()), ports[0][0]))

    def by_bin(self):
        """Share of all uplinks' capacity used in each USE_BIN_S from T0 (the last bin partial);
        [] if fewer than two samples were taken."""
        if len(self.samples) < 2:
            return []
        out, (t_a, b_a, _) = [], self.samples[0]
        for i, (t, b, _) in enumerate(self.samples[1:], 1):
            if t - t_a >= USE_BIN_S - USE_SAMPLE_S / 2 or i == len(self.samples) - 1:
                out.append(round((b - b_a) / (self.cap_bps * (t - t_a)), 3))
                t_a, b_a = t, b
        return out

    def seeder(self, t_end):
        """(bytes the seeder sent on the wire from T0 to t_end, share of its uplink's capacity
        that was): the floor's F/U term assumes it sent each piece once, never idle."""
        inside = [x for x in self.samples if x[0] <= t_end] or self.samples[:1]
        (t_a, _, b_a), (t_b, _, b_b) = self.samples[0], inside[-1]
        return b_b - b_a, (b_b - b_a) / (self.seeder_cap_bps * max(t_b - t_a, 1e-9))


def swarm_run(lab_, seed, ws, impl, py, workdir, logdir, tag):
    rundir = os.path.join(workdir, "run")
    shutil.rmtree(rundir, ignore_errors=True)
    os.makedirs(rundir)
    paths = prepare(seed, ws, rundir, lab_.ip)
    cv = threading.Condition()

    def poke():
        with cv:
            cv.notify_all()

    need = (ws.n + 1) * NODE_MEM_MB.get(impl, NODE_MEM_MB_OURS) + MEM_SPARE_MB
    avail = _mem_available_mb()
    if need > avail:
        print(f"  {tag:<18} SKIPPED: needs ~{need} MB, {avail} MB available", flush=True)
        return None
    load_before = os.getloadavg()[0]
    procs = []
    use = UplinkUse(lab_, [ws.seeder_mbit] + [ws.mbit] * ws.n)
    lab_.hold()
    ports0 = lab_.port_counters()
    t_spawn = time.monotonic()
    try:
        for h, (data, conf) in enumerate(paths):
            argv, cwd = run.node_cmd(impl, py, data, conf, lab_.ip[h])
            procs.append(run.Proc(lab_.argv(h, argv), cwd, poke))
        run.wait_until(lambda: all(pr.t_listen for pr in procs), cv, LISTEN_TIMEOUT_S, procs, "listened")
        t_listening = time.monotonic() - t_spawn
        ports1 = lab_.port_counters()
        cpu0 = [pr.usage() for pr in procs]
        sleeps0 = [pr.sleeps() for pr in procs]
        m0, m0s = cpu_times(), _softirq()
        t0, t0_wall = time.monotonic(), time.time()
        lab_.release()
        use.start()
        for pr in procs:
            os.kill(pr.pid, signal.SIGCONT)
        timeout = SYNC_FACTOR * ws.t_min() + SYNC_SLACK_S
        run.wait_until(lambda: all(pr.t_complete for pr in procs), cv, timeout, procs, "completed")
        m1 = cpu_times()
        t_end = time.monotonic()
        rss = [pr.peak_rss_mb() for pr in procs]
        use1 = [pr.usage() for pr in procs]
        sleeps = sum(b - a for a, b in zip(sleeps0, [pr.sleeps() for pr in procs]) if a is not None and b is not None)
        cpu = [sum(b[:2]) - sum(a[:2]) if a and b else 0.0 for a, b in zip(cpu0, use1)]
        cpu_sys = sum(b[1] - a[1] for a, b in zip(cpu0, use1) if a and b)
        soft = _softirq_share(m0s, _softirq())
    except run.RunError as e:
        _stop_all(procs)
        _save_logs(logdir, tag, procs)
        done = sum(1 for pr in procs if pr.t_complete)
        raise SystemExit(f"scale: {tag}: {e} ({done}/{len(procs)} complete; logs in {logdir})")
    finally:
        use.halt.set()
        _stop_all(procs)
    use.join(USE_SAMPLE_S + 5)
    _save_logs(logdir, tag, procs)
    bad = [(h, why) for h, (data, _) in enumerate(paths) if (why := seed.check(data))]
    if bad:
        raise SystemExit(f"scale: {tag}: WRONG FILE on host {bad[0][0]}: {bad[0][1]} ({len(bad)} hosts)")
    shutil.rmtree(rundir)
    crossed = sum(ports1[h][1] - ports0[h][1] for h in range(ws.n + 1))
    if crossed:
        raise SystemExit(f"scale: {tag}: BARRIER BROKEN: {crossed} frames reached hosts before T0")
    times = sorted(pr.t_complete - t0 for pr in procs[1:])
    seeder_sent, seeder_use = use.seeder(t_end - t0)
    lk = [links(impl, pr.lines) for pr in procs]
    moved_mib = ws.n * ws.size / MiB
    r = {"scenario": ws.name, "impl": impl, "n": ws.n, "t_min": ws.t_min(), "times": times,
         "sync_s": t_end - t0, "busy": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
         "cpu_s": sum(cpu), "cpu_sys_s": cpu_sys, "softirq": soft, "cpu_seeder_s": cpu[0], "cpu_ms_per_mib": 1000 * sum(cpu) / moved_mib,
         "wakeups_per_mib": sleeps / moved_mib,
         "rss_med_mb": sorted(x for x in rss if x)[len(rss) // 2],
         "rss_max_mb": max(x for x in rss if x), "links_opened": sum(o for o, _ in lk) // 2,
         "links_max_per_node": max(m for _, m in lk), "links_med_per_node": sorted(m for _, m in lk)[len(lk) // 2],
         "dup_pieces": dup_pieces([ln for pr in procs for ln in pr.lines]) if impl != "libtorrent" else None,
         "all_listening_s": t_listening, "load1": load_before,
         "uplink_use": use.by_bin(), "uplink_bin_s": USE_BIN_S,
         "seeder_sent_files": seeder_sent / ws.size, "seeder_use": seeder_use,
         "seeder_all_out_s": _logged_at(procs[0].lines, "every_piece_sent", t0_wall),
         "solution": run.BASELINE if impl == "baseline" else run.SOLUTION}
    r["valid"] = r["busy"] <= MAX_BUSY
    tm = ws.t_min()
    print(f"  {tag:<18} T_min {tm:6.1f} s  p50 {_q(times, .5) / tm:.2f}x  p99 {_q(times, .99) / tm:.2f}x  "
          f"p100 {times[-1] / tm:.2f}x  busy {100 * r['busy']:.0f}%{'' if r['valid'] else ' NOT VALID'}  "
          f"CPU {r['cpu_s']:.0f} s (sys {cpu_sys:.0f} s, softirq {100 * soft:.0f}% of machine; "
          f"{r['cpu_ms_per_mib']:.1f} ms/MiB, seeder {cpu[0]:.1f} s; {r['wakeups_per_mib']:.0f} wake-ups/MiB)  "
          f"links {r['links_opened']} (max {r['links_max_per_node']}/node)  RSS med {r['rss_med_mb']:.0f} "
          f"max {r['rss_max_mb']:.0f} MB  dup {r['dup_pieces']}  start {t_listening:.0f} s  "
          f"uplinks used {scale_report.share(scale_report.used(r))} "
          f"(first 30 s {scale_report.share(scale_report.used(r, 30))}), seeder's "
          f"{seeder_use:.2f}: it sent {r['seeder_sent_files']:.2f}x the file, every piece once by "
          f"{scale_report.multiple(r['seeder_all_out_s'], tm)} T_min", flush=True)
    return r


def _logged_at(lines, event, t0_wall):
    """Seconds from T0 to a node's first `event` line (by the ts it logged), None if none."""
    for ln in lines:
        if f"event={event} " in ln or ln.endswith(f"event={event}"):
            ts = ln.split(" ", 1)[0].removeprefix("ts=")
            return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float(ts[19:-1]) - t0_wall
    return None


def _mem_available_mb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def _q(xs, q):
    """The q-quantile of sorted xs (nearest rank)."""
    return xs[min(len(xs) - 1, max(0, int(-(-q * len(xs) // 1)) - 1))]


def _stop_all(procs):
    """SIGCONT + SIGTERM to every node first (by PID), then reap each: hundreds stop in parallel."""
    for pr in procs:
        if pr.p.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                try:
                    os.kill(pr.pid, sig)
                except ProcessLookupError:
                    pass
    deadline = time.monotonic() + STOP_WAIT_S
    for pr in procs:
        try:
            pr.p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        pr.stop()


def _save_logs(logdir, tag, procs):
    for h, pr in enumerate(procs):
        with open(os.path.join(logdir, f"{tag}-h{h}.log"), "w") as f:
            f.write("\n".join(pr.lines) + "\n")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default="W1,W2,W3,W4,W5", help="comma list (W0: a quick smoke test)")
    p.add_argument("--impl", default="ours,libtorrent", help="ours, libtorrent, baseline (with --baseline)")
    p.add_argument("--baseline", metavar="DIR", help="impl 'baseline': our node from DIR/ (another solution/)")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--append", action="store_true", help="add to bench/out/scale-results.json, do not replace")
    p.add_argument("--report-only", nargs="?", const=RESULTS, metavar="JSON",
                   help="only re-render the report from the results (e.g. docs/bench-scale.json)")
    p.add_argument("--out", default=os.path.join(ROOT, "docs"), help="where bench-scale.md and the charts go")
    p.add_argument("--tmp", default="/var/tmp", help="parent of the work dir (a disk: N x F bytes)")
    p.add_argument("--profile", metavar="DIR", help="our nodes under cProfile (bench/profile_node.py)")
    p.add_argument("--label", action="append", default=[], metavar="IMPL=TEXT",
                   help="name an implementation's rows, e.g. baseline='ours (before)'")
    a = p.parse_args(argv)
    a.scenarios = [s.strip().upper() for s in a.scenarios.split(",") if s.strip()]
    a.impl = [s.strip() for s in a.impl.split(",") if s.strip()]
    a.label = dict(x.split("=", 1) for x in a.label)
    for s in a.scenarios:
        if s not in W_SCENARIOS:
            p.error(f"unknown scenario {s} (have {', '.join(W_SCENARIOS)})")
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.report_only:
        return scale_report.render(a.report_only, a.out)
    run.preflight(a.impl)
    if shutil.which("tc") is None:
        raise SystemExit("scale: needs tc (iproute2): apt-get install -y iproute2")
    if a.baseline:
        run.BASELINE = os.path.abspath(a.baseline)
    if a.profile:
        run.PROFILE_DIR = os.path.abspath(a.profile)
        os.makedirs(run.PROFILE_DIR, exist_ok=True)
        os.environ["NODE_PROFILE_DIR"] = run.PROFILE_DIR
    signal.signal(signal.SIGTERM, run._interrupted)  # a killed bench still deletes its namespaces
    import compileall
    for sol in filter(None, (run.SOLUTION, run.BASELINE)):
        compileall.compile_dir(os.path.join(sol, "node"), quiet=1)
    results = []
    if a.append and os.path.exists(RESULTS):
        with open(RESULTS) as f:
            results = json.load(f)["runs"]
    py = sys.executable
    workdir = tempfile.mkdtemp(prefix="p2ps-", dir=a.tmp)
    logdir = os.path.join(ROOT, "bench", "out", "logs")
    os.makedirs(logdir, exist_ok=True)
    try:
        for name in a.scenarios:
            ws = W_SCENARIOS[name]
            print(f"{name}: {ws.describe()}; T_min {ws.t_min():.1f} s", flush=True)
            sc = scenarios.Scenario(name, ws.n + 1, ws.size, ws.piece, "one-seeder", ws.seed)
            seed = Seed(sc, workdir)
            with ScaleLab(ws.n + 1) as lab_:
                lab_.shape(ws.mbit, ws.seeder_mbit)
                for k in range(a.runs):
                    for impl in a.impl:
                        r = swarm_run(lab_, seed, ws, impl, py, workdir, logdir, f"{name}-{impl}-{k + 1}")
                        if r is None:
                            continue
                        r.update(scenario_info=asdict(ws), date=time.strftime("%Y-%m-%d %H:%M"),
                                 label=a.label.get(impl, impl))
                        results.append(r)
                        _save(results)
            os.unlink(seed.path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(a.out, exist_ok=True)
    shutil.copy(RESULTS, os.path.join(a.out, "bench-scale.json"))  # the runs behind the report
    return scale_report.render(RESULTS, a.out)


def _save(results):
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"runs": results}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
