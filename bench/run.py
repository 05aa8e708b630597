"""Benchmark: our node vs libtorrent on an emulated LAN, plus the machine's ideal pipeline.

    python3 bench/run.py [--scenarios S1,S5] [--runs 3] [--impl ours,libtorrent,ours-tls] [--out DIR]

What lives here: the command line, the barrier and timing of one swarm run, the ideal-pipeline runs,
and the order of everything. Namespaces: lab.py. Files and layouts: scenarios.py. Tables and the
chart: report.py. Must run as root (network namespaces) with the bench venv's python (see README).

One timed run: lay out the host files, hold the LAN (lab.py: the bridge is down), spawn one
process per host; each stops itself right after it prints `event=listening` (start gates: gate.py,
lt_node.py), and counts as listening once it has. When all listen, write+delete as
much as the run will write, then T0: switch the LAN on and SIGCONT all, and time until every
process printed `event=complete`; then read each node's peak RSS, SIGTERM them (by PID), and check
every host's file against the seed's SHA-1 (a wrong file fails the bench). The frames hosts sent
into the held LAN are counted each run: the barrier held only if none crossed it (else the bench
fails) and, for the gates, none was even sent.
"""

import argparse
import compileall
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import lab  # noqa: E402
import report  # noqa: E402
from scenarios import GiB, SCENARIOS, Seed, prewrite  # noqa: E402

ROOT = os.path.dirname(HERE)
SOLUTION = os.path.join(ROOT, "solution")
PORT = 6881  # every host listens on the same port (the SPEC's Peers are bare IPs)
LISTEN_TIMEOUT_S = 60  # spawn -> all listening (60 Python processes on 2 cores take ~10 s)
SYNC_TIMEOUT_S = 120  # SIGCONT -> all complete; libtorrent needs ~3 s for the slowest scenario
STOP_TIMEOUT_S = 10  # SIGTERM -> exit, then SIGKILL
GATE_TIMEOUT_S = 10  # `listening` printed -> stopped at its start gate (a few ms; 60 starting at once)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PIPE_SIZE = 1 * GiB  # the ideal pipeline moves this much, in 256 KiB pieces (issue 4)
PIPE_PIECE = 256 << 10
PIPE_RUNS = 3  # per pipeline variant; the median is used
QUIET_LOAD = 1.5  # loadavg(1 min) below which the machine counts as quiet
IMPLS = ("ours", "libtorrent", "ours-tls")
TLS_SCENARIOS = ("S1", "S2")  # ours-tls runs only here by default: the bulk-transfer cost of TLS
CERTS = None  # the work dir's certificates for ours-tls (scripts/certs.sh, once per bench run)
BASELINE = None  # --baseline DIR: impl "baseline" is our node from DIR (another checkout's solution/)


NODE_LOG_LEVEL = "info"  # our node's log level (--node-log-level debug to diagnose a slow run)
PROFILE_DIR = None  # --profile DIR: our nodes run under cProfile (profile_node.py)


def node_cmd(impl, py, data, conf, ip):
    """(argv, cwd) of one node on one host."""
    if impl in ("ours", "ours-tls", "baseline", "baseline-tls"):
        # profile_node.py and gate.py run the node from $BENCH_SOLUTION (baseline: --baseline DIR)
        run = [py, os.path.join(HERE, "profile_node.py" if PROFILE_DIR else "gate.py")]
        if impl.startswith("baseline"):
            run = ["env", f"BENCH_SOLUTION={BASELINE}", *run]
        if impl.endswith("-tls"):  # one shared member certificate, as a scaled service would use
            run += ["--tls-cert", os.path.join(CERTS, "member.pem"),
                    "--tls-key", os.path.join(CERTS, "member.key"), "--tls-ca", os.path.join(CERTS, "ca.pem")]
        return run + ["--data", data, "--conf", conf, "--state", data + ".state.json",
                "--bind", ip, "--port", str(PORT), "--discovery", "off",
                "--log-level", NODE_LOG_LEVEL], BASELINE if impl.startswith("baseline") else SOLUTION
    return [py, os.path.join(HERE, "lt_node.py"), "--data", data, "--conf", conf,
            "--bind", ip, "--port", str(PORT)], HERE


class Proc:
    """One node process and the timestamps of its lines; a reader thread SIGSTOPs it when it
    listens (the barrier) and notes when it completes."""

    def __init__(self, argv, cwd, on_event):
        self.t_spawn = time.monotonic()
        self.p = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        self.pid = self.p.pid
        self.t_listen = self.t_complete = None
        self.lines = []
        self._on_event = on_event
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.p.stdout:
            now = time.monotonic()
            self.lines.append(line.decode(errors="replace").rstrip())
            if self.t_listen is None and b"event=listening" in line:
                # Held here until every host listens: the process stops itself (its start gate).
                # Signalling it from here instead would race with that: a SIGCONT could land
                # before its own SIGSTOP, which would then hold it for good.
                if self._wait_stopped():
                    self.t_listen = now
                self._on_event()
            elif self.t_complete is None and b"event=complete" in line:
                self.t_complete = now
                self._on_event()
        self._on_event()  # EOF: the process died or was stopped

    def _wait_stopped(self):
        """Wait until the process has stopped itself; False if it died or never did."""
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return False
            if state == "T":
                return True
            if state in "ZX":
                return False
            time.sleep(0.0005)
        return False

    def peak_rss_mb(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def usage(self):
        """(user s, system s, minor page faults) the process has used so far; None once it is gone."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS, int(fields[7])
        except (OSError, IndexError, ValueError):
            return None

    def sleeps(self):
        """Times its threads have blocked and been woken so far (voluntary context switches, all
        threads alive now); None once it is gone. On a capped link, CPU follows these."""
        try:
            total = 0
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                with open(f"/proc/{self.pid}/task/{tid}/status") as f:
                    total += next(int(ln.split()[1]) for ln in f if ln.startswith("voluntary_ctxt_switches"))
            return total
        except (OSError, StopIteration, ValueError):
            return None

    def stop(self):
        """SIGTERM, wait, SIGKILL if needed; returns the exit code (-9 if it had to be killed)."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGCONT)  # in case the run failed while it was held
            self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(STOP_TIMEOUT_S)
        self._reader.join(STOP_TIMEOUT_S)
        return self.p.returncode


def wait_until(cond, cv, timeout, procs, what):
    deadline = time.monotonic() + timeout
    with cv:
        while not cond():
            dead = [i for i, pr in enumerate(procs) if pr.p.poll() is not None]
            if dead:
                raise RunError(f"host {dead[0]} exited (code {procs[dead[0]].p.returncode}) before {what}",
                               procs)
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunError(f"timeout: not all hosts {what} within {timeout} s", procs)
            cv.wait(min(left, 0.5))


class RunError(Exception):
    def __init__(self, msg, procs):
        super().__init__(msg)
        self.procs = procs


def swarm_run(lab_, seed, impl, py, workdir, logdir, tag):
    """One timed run of one scenario with one implementation -> a result dict."""
    sc = seed.sc
    rundir = os.path.join(workdir, "run")
    shutil.rmtree(rundir, ignore_errors=True)
    os.makedirs(rundir)
    paths = seed.prepare(rundir, lab_.ip[:sc.nodes], PORT)
    cv = threading.Condition()

    def poke():
        with cv:
            cv.notify_all()

    load_before = os.getloadavg()[0]
    procs = []
    lab_.hold()
    ports0 = lab_.port_counters()
    try:
        for h, (data, conf) in enumerate(paths):
            argv, cwd = node_cmd(impl, py, data, conf, lab_.ip[h])
            procs.append(Proc(lab_.argv(h, argv), cwd, poke))
        wait_until(lambda: all(pr.t_listen for pr in procs), cv, LISTEN_TIMEOUT_S, procs, "listened")
        # Warm the memory only now: starting 60 processes takes GBs, and would eat warm pages.
        t_pw = time.monotonic()
        prewrite(workdir, seed.bytes_to_move())
        t_pw = time.monotonic() - t_pw  # not part of from-spawn: the nodes are held meanwhile
        cpu0 = [pr.usage() for pr in procs]
        ports1 = lab_.port_counters()
        t_cont = time.monotonic()  # T0: the LAN goes on, then every process goes on
        lab_.release()
        for pr in procs:
            os.kill(pr.pid, signal.SIGCONT)
        if os.environ.get("BENCH_RELEASED_FILE"):  # for profilers: `perf record -k CLOCK_MONOTONIC`
            with open(os.environ["BENCH_RELEASED_FILE"], "w") as f:
                f.write(f"{t_cont:.6f}\n")
        wait_until(lambda: all(pr.t_complete for pr in procs), cv, SYNC_TIMEOUT_S, procs, "completed")
        t_done = max(pr.t_complete for pr in procs)
        rss = [pr.peak_rss_mb() for pr in procs]
        cpu = [tuple(y - x for x, y in zip(a, b)) if None not in (a, b) else (0.0, 0.0, 0)
               for a, b in zip(cpu0, (pr.usage() for pr in procs))]
    except RunError as e:
        for pr in procs:
            pr.stop()
        _save_logs(logdir, tag, procs)
        raise SystemExit(f"bench: {tag}: {e} (logs in {logdir})")
    finally:
        codes = [pr.stop() for pr in procs]
    _save_logs(logdir, tag, procs)
    bad = [(h, why) for h, (data, _) in enumerate(paths) if (why := seed.check(data))]
    if bad:
        raise SystemExit(f"bench: {tag}: WRONG FILE on host {bad[0][0]}: {bad[0][1]} "
                         f"({len(bad)} hosts wrong; logs in {logdir})")
    shutil.rmtree(rundir)
    held_sent = sum(ports1[h][0] - ports0[h][0] for h in range(sc.nodes))
    held_crossed = sum(ports1[h][1] - ports0[h][1] for h in range(sc.nodes))
    if held_crossed:
        raise SystemExit(f"bench: {tag}: BARRIER BROKEN: {held_crossed} frames reached hosts before T0")
    startup = [pr.t_listen - pr.t_spawn for pr in procs]
    startup_cpu = [c[0] + c[1] for c in cpu0 if c] or [0.0]  # at listening: they are held
    r = {"scenario": sc.name, "impl": impl, "sync_s": t_done - t_cont,
         "from_spawn_s": t_done - min(pr.t_spawn for pr in procs) - t_pw,
         "startup_med_s": statistics.median(startup), "startup_max_s": max(startup),
         "all_listening_s": max(pr.t_listen for pr in procs) - min(pr.t_spawn for pr in procs),
         "startup_cpu_med_s": statistics.median(startup_cpu), "held_frames_sent": held_sent,
         "first_complete_s": min(pr.t_complete for pr in procs) - t_cont,
         "peak_rss_mb": max((x for x in rss if x is not None), default=None),
         "cpu_s": sum(u + k for u, k, _ in cpu), "cpu_sys_s": sum(k for _, k, _ in cpu),
         "cpu_seeder_s": sum(cpu[0][:2]), "minor_faults": sum(f for _, _, f in cpu),
         "exit_codes": sorted(set(codes)), "load1": load_before}
    print(f"  {tag:<22} sync {r['sync_s']:7.3f} s  from spawn {r['from_spawn_s']:7.3f} s  "
          f"start-up med {r['startup_med_s']:.3f} s (CPU {r['startup_cpu_med_s'] * 1000:.0f} ms; all {r['all_listening_s']:.2f} s)  held frames {held_sent}  CPU {r['cpu_s']:.2f} s (sys {r['cpu_sys_s']:.2f}, h0 {r['cpu_seeder_s']:.2f}, {r['minor_faults'] * 4 / 1024:.0f} MiB faulted)  peak RSS {r['peak_rss_mb'] or 0:.0f} MB  "
          f"exit {r['exit_codes']}", flush=True)
    return r


def _save_logs(logdir, tag, procs):
    for h, pr in enumerate(procs):
        with open(os.path.join(logdir, f"{tag}-h{h}.log"), "w") as f:
            f.write("\n".join(pr.lines) + "\n")


def pipeline_run(lab_, py, workdir, threads):
    """One ideal-pipeline run: host 1 receives from host 0 -> the receiver's JSON result."""
    out = os.path.join(workdir, "pipeline.bin")
    lab_.release()  # no barrier here: the receiver is ready before the sender starts
    prewrite(workdir, PIPE_SIZE)
    script = os.path.join(HERE, "pipeline.py")
    recv = subprocess.Popen(lab_.argv(1, [py, script, "recv", "--bind", lab_.ip[1], "--out", out,
                                          "--size", str(PIPE_SIZE), "--piece", str(PIPE_PIECE),
                                          "--threads", str(threads)]),
                            stdout=subprocess.PIPE, text=True)
    try:
        if "listening" not in recv.stdout.readline():
            raise SystemExit("bench: pipeline receiver did not start")
        send = subprocess.run(lab_.argv(0, [py, script, "send", "--to", lab_.ip[1],
                                            "--size", str(PIPE_SIZE)]), timeout=SYNC_TIMEOUT_S)
        res = json.loads(recv.stdout.readline())
        recv.wait(STOP_TIMEOUT_S)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
        if os.path.exists(out):
            os.unlink(out)
    if send.returncode != 0:
        raise SystemExit("bench: pipeline sender failed")
    print(f"  pipeline {threads} thread(s): last pwrite {res['write_s']:.3f} s, "
          f"with fsync {res['fsync_s']:.3f} s", flush=True)
    return res


def wait_quiet(limit_s):
    """Wait (up to limit_s) for loadavg(1) < QUIET_LOAD and no running Docker containers."""
    t0 = time.monotonic()
    while True:
        load = os.getloadavg()[0]
        containers = docker_containers()
        if load < QUIET_LOAD and not containers:
            return
        if time.monotonic() - t0 >= limit_s:
            print(f"bench: machine still busy (load {load:.2f}, {containers} containers); going on")
            return
        print(f"bench: waiting for a quiet machine (load {load:.2f}, {containers} containers)", flush=True)
        time.sleep(15)


def docker_containers():
    try:
        out = subprocess.run(["docker", "ps", "-q"], capture_output=True, text=True, timeout=10).stdout
        return len(out.split())
    except (OSError, subprocess.TimeoutExpired):
        return 0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list, e.g. S1,S5")
    p.add_argument("--runs", type=int, default=3, help="timed runs per scenario and implementation")
    p.add_argument("--impl", default=",".join(IMPLS), help="ours,libtorrent,ours-tls (and baseline, with "
                   "--baseline); ours-tls is our node in a closed swarm (mutual TLS)")
    p.add_argument("--tls-scenarios", default=",".join(TLS_SCENARIOS),
                   help="scenarios ours-tls runs in (comma list, or 'all')")
    p.add_argument("--baseline", metavar="DIR", help="impl 'baseline': our node from DIR (e.g. a worktree's "
                   "solution/), for before/after comparisons in one run")
    p.add_argument("--no-pipeline", action="store_true", help="skip the ideal-pipeline runs")
    p.add_argument("--out", help="where bench.md/bench.png go (default: docs/ for a full run, "
                                 "else bench/out/)")
    p.add_argument("--tmp", default="/var/tmp", help="parent of the work dir (on disk, not tmpfs)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECS",
                   help=f"first wait up to SECS for load < {QUIET_LOAD} and no Docker containers")
    p.add_argument("--profile", metavar="DIR", help="run our nodes under cProfile, one DIR/PID.prof each "
                                                    "(read with: python bench/profile_node.py --report DIR)")
    p.add_argument("--node-log-level", default="info", help="our node's --log-level (info keeps logs small)")
    a = p.parse_args(argv)
    a.scenarios = [s.strip().upper() for s in a.scenarios.split(",") if s.strip()]
    a.impl = [s.strip() for s in a.impl.split(",") if s.strip()]
    a.tls_scenarios = (set(SCENARIOS) if a.tls_scenarios.strip().lower() == "all" else
                       {s.strip().upper() for s in a.tls_scenarios.split(",") if s.strip()})
    for s in a.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s} (have {', '.join(SCENARIOS)})")
    for s in a.impl:
        if s not in IMPLS and not (s in ("baseline", "baseline-tls") and a.baseline):
            p.error(f"unknown implementation {s} (have {', '.join(IMPLS)})")
    full = set(a.scenarios) == set(SCENARIOS) and set(a.impl) == set(IMPLS) and not a.no_pipeline
    a.out = a.out or os.path.join(ROOT, "docs" if full else "bench/out")
    return a


def preflight(impls):
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (network namespaces); run as root or with sudo")
    if shutil.which("ip") is None:
        raise SystemExit("bench: needs iproute2 (`ip`); apt-get install iproute2")
    if "ours-tls" in impls and shutil.which("openssl") is None:
        raise SystemExit("bench: ours-tls needs openssl (scripts/certs.sh); apt-get install openssl")
    if "libtorrent" in impls:
        r = subprocess.run([sys.executable, "-c", "import libtorrent; print(libtorrent.__version__)"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit("bench: libtorrent does not import in the bench venv "
                             f"({sys.executable}): {r.stderr.strip().splitlines()[-1:]}")


def make_certs(workdir):
    """A fresh swarm CA and a member certificate in the work dir, for ours-tls."""
    certs = os.path.join(workdir, "certs")
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "certs.sh"), certs], check=True,
                   stdout=subprocess.DEVNULL, timeout=60)
    return certs


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    global NODE_LOG_LEVEL, PROFILE_DIR, BASELINE, CERTS
    a = parse_args(argv)
    NODE_LOG_LEVEL = a.node_log_level
    BASELINE = os.path.abspath(a.baseline) if a.baseline else None
    if a.profile:
        PROFILE_DIR = os.path.abspath(a.profile)
        os.makedirs(PROFILE_DIR, exist_ok=True)
        os.environ["NODE_PROFILE_DIR"] = PROFILE_DIR  # inherited by every node process
    signal.signal(signal.SIGTERM, _interrupted)  # a killed bench still deletes its namespaces
    preflight(a.impl)
    # As the image does at build time: otherwise, with PYTHONDONTWRITEBYTECODE set, each of 60
    # node processes compiles the package from source again (~40 ms of CPU each).
    compileall.compile_dir(os.path.join(SOLUTION, "node"), quiet=1)
    if BASELINE:
        compileall.compile_dir(os.path.join(BASELINE, "node"), quiet=1)
    if a.wait_quiet:
        wait_quiet(a.wait_quiet)
    py = sys.executable  # the bench venv's python runs the bench, our nodes and lt_node alike
    meta = report.machine_info(ROOT, a.impl)
    meta["load_before"] = os.getloadavg()
    meta["docker_containers"] = docker_containers()
    scs = [SCENARIOS[s] for s in a.scenarios]
    workdir = tempfile.mkdtemp(prefix=lab.PREFIX, dir=a.tmp)
    logdir = os.path.join(ROOT, "bench", "out", "logs")
    os.makedirs(logdir, exist_ok=True)
    t0 = time.monotonic()
    results, pipes = [], {1: [], 2: []}
    try:
        print(f"bench: work dir {workdir} ({report.fs_type(workdir)}); logs in {logdir}", flush=True)
        if any(i.endswith("-tls") for i in a.impl):
            CERTS = make_certs(workdir)
        with lab.Lab(max([2] + [sc.nodes for sc in scs])) as lab_:
            if not a.no_pipeline:
                for _ in range(PIPE_RUNS):
                    for threads in (1, 2):
                        pipes[threads].append(pipeline_run(lab_, py, workdir, threads))
            for sc in scs:
                print(f"{sc.name}: {sc.describe()}", flush=True)
                seed = Seed(sc, workdir)
                for run in range(a.runs):
                    # interleaved, so drift in the machine hits both alike; the order turns each run,
                    # so the one that follows the other's teardown (its disk writeback) is not always the same
                    for impl in (a.impl if run % 2 == 0 else a.impl[::-1]):
                        if impl.endswith("-tls") and sc.name not in a.tls_scenarios:
                            continue
                        results.append(swarm_run(lab_, seed, impl, py, workdir, logdir,
                                                 f"{sc.name}-{impl}-{run + 1}"))
                results_bytes = seed.bytes_to_move()
                for r in results:
                    if r["scenario"] == sc.name:
                        r["bytes_to_move"] = results_bytes
                os.unlink(seed.path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta["load_after"] = os.getloadavg()
    meta["bench_s"] = time.monotonic() - t0
    data = {"meta": meta, "pipeline": pipes, "runs": results,
            "scenarios": {sc.name: sc.describe() for sc in scs}}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(ROOT, "bench", "out", "results.json"), "w") as f:
        json.dump(data, f, indent=1)
    md = report.markdown(data)
    with open(os.path.join(a.out, "bench.md"), "w") as f:
        f.write(md)
    report.chart(data, os.path.join(a.out, "bench.png"))
    print()
    print(md)
    print(f"bench: wrote {a.out}/bench.md and bench.png in {meta['bench_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
