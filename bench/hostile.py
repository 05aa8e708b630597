"""Hostile peers, measured against issue 12's goal: an honest swarm syncs beside an attacker.

    python3 bench/hostile.py [--kinds all] [--attack-s 30] [--conns 8] [--leechers 4] [--out DIR]

For each attack kind, two runs side by side: the honest swarm alone (one seeder, LEECHERS empty
leechers, full conf, discovery off), then the same swarm while one attacker floods the seeder
from CONNS connections for ATTACK_S seconds (tests/unit/attacker.py: the largest legal frame of
one kind, as fast as the node takes it, never reading). Reported per kind: the swarm's time
(leechers spawned -> last leecher complete) as a multiple of its unattacked time, the seeder's
peak RSS against its unattacked peak, the slowest STATUS a polite client got from the seeder
(asked every STATUS_EVERY_S throughout the attack and 1 s after it), and whether the seeder
stayed up. Goal (issue 12): <= 1.5x, peak < unattacked peak + 64 MiB, STATUS within 1 s.

Everything runs on loopback: the seeder on 127.0.0.20, leechers on .21 up, the attacker's
connections from 127.0.0.60 up. Processes are ours, signalled by PID only.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOLUTION = os.path.join(ROOT, "solution")
ATTACKER = os.path.join(ROOT, "tests", "unit", "attacker.py")
sys.path.insert(0, SOLUTION)
from node import status  # noqa: E402  (the polite client; plain sockets, no gevent)
from node.config import parse_file_info  # noqa: E402

KINDS = ("have", "bitfield", "request", "reject", "get_meta", "peers", "status_req")
SEEDER_IP = "127.0.0.20"
STATUS_WITHIN_S = 1.0  # the goal: a polite STATUS_REQ answered this fast throughout
STATUS_EVERY_S = 0.2
RSS_MARGIN_MB = 64  # the goal: peak RSS under the unattacked peak + this
RATIO_GOAL = 1.5  # the goal: the honest swarm within this multiple of its unattacked time
FLOOD_LEAD_S = 1.0  # the flood is on this long before the honest leechers start
SYNC_TIMEOUT_S = 120
STOP_TIMEOUT_S = 10
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Node:
    """One node process; a reader thread notes when it prints `listening` and `complete`."""

    def __init__(self, py, workdir, name, ip, port, conf, logprefix):
        self.ip, self.port, self.name = ip, port, name
        self.data = os.path.join(workdir, f"{name}.bin")
        conf_path = os.path.join(workdir, f"{name}.json")
        with open(conf_path, "w") as f:
            json.dump(conf, f)
        self.log = open(f"{logprefix}{name}.log", "wb")
        self.t_spawn = time.monotonic()
        self.t_complete = None
        self.p = subprocess.Popen([py, "-m", "node", "--data", self.data, "--conf", conf_path,
                                   "--bind", ip, "--port", str(port), "--discovery", "off",
                                   "--log-level", "info"], cwd=SOLUTION, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.log.write(line)
            if self.t_complete is None and b"event=complete" in line:
                self.t_complete = time.monotonic()
                self.done.set()
        self.done.set()  # EOF: it died or was stopped

    def peak_rss_mb(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return None

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(STOP_TIMEOUT_S)
        self.done.wait(STOP_TIMEOUT_S)
        self.log.close()


class StatusProbe:
    """A polite client asking the seeder for its STATUS every STATUS_EVERY_S until stopped."""

    def __init__(self, ip, port):
        self.ip, self.port = ip, port
        self.times, self.failures = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                status.fetch(self.ip, self.port, timeout=STATUS_WITHIN_S)
                self.times.append(time.monotonic() - t0)
            except OSError as e:
                self.failures.append(f"{type(e).__name__}: {e}")
            self._stop.wait(STATUS_EVERY_S)

    def stop(self):
        self._stop.set()
        self._thread.join(STATUS_WITHIN_S + 1)
        return max(self.times, default=None), len(self.times), self.failures


def cpu_s(pid):
    """User + system CPU seconds process pid has used so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def make_file(size, piece, seed=12):
    rng = random.Random(seed)
    data = b"".join(rng.randbytes(min(1 << 24, size - i)) for i in range(0, size, 1 << 24))
    info = {"Size": size, "PartSize": piece,
            "Parts": [hashlib.sha1(data[i:i + piece]).hexdigest() for i in range(0, size, piece)]}
    return data, info


def one_run(a, py, workdir, logdir, data, info, port, kind, n):
    """One honest swarm, attacked by `kind` (None: alone) -> a result dict."""
    tag = f"{n}-{kind or 'alone'}"
    rundir = os.path.join(workdir, tag)
    os.makedirs(rundir)
    ips = [SEEDER_IP] + [f"127.0.0.{21 + i}" for i in range(a.leechers)]
    peers = [f"{ip}:{port}" for ip in ips]
    with open(os.path.join(rundir, "seeder.bin"), "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    nodes, attacker, probe = [], None, None
    try:
        seeder = Node(py, rundir, "seeder", SEEDER_IP, port, {"Peers": peers, "FileInfo": info},
                      os.path.join(logdir, f"{tag}-"))
        nodes.append(seeder)
        if not seeder.done.wait(SYNC_TIMEOUT_S) or seeder.t_complete is None:
            raise SystemExit(f"hostile: {tag}: the seeder did not come up (log in {logdir})")
        probe = StatusProbe(SEEDER_IP, port)
        if kind:
            nice = ["nice", "-n", str(a.attacker_nice)] if a.attacker_nice else []
            attacker = subprocess.Popen(nice + [py, ATTACKER, SEEDER_IP, str(port),
                                                parse_file_info(info).meta_id.hex(), str(len(info["Parts"])),
                                                kind, str(a.conns), str(a.attack_s)])
            t_attack = time.monotonic()
            time.sleep(FLOOD_LEAD_S)
        cpu0 = (cpu_s(seeder.p.pid), cpu_s(attacker.pid) if attacker else 0.0)
        t0 = time.monotonic()
        for i, ip in enumerate(ips[1:]):
            nodes.append(Node(py, rundir, f"leecher{i}", ip, port, {"Peers": peers, "FileInfo": info},
                              os.path.join(logdir, f"{tag}-")))
        deadline = t0 + SYNC_TIMEOUT_S
        for n in nodes[1:]:
            n.done.wait(max(0.0, deadline - time.monotonic()))
        late = [n.name for n in nodes[1:] if n.t_complete is None]
        if late:
            raise SystemExit(f"hostile: {tag}: {', '.join(late)} did not complete in {SYNC_TIMEOUT_S} s")
        sync_s = max(n.t_complete for n in nodes[1:]) - t0
        cpu = (cpu_s(seeder.p.pid) - cpu0[0], (cpu_s(attacker.pid) - cpu0[1]) if attacker else 0.0,
               sum(cpu_s(n.p.pid) for n in nodes[1:]))
        if attacker is not None:  # the attack runs its full time, and the probe 1 s beyond it
            attacker.wait(max(0.0, t_attack + a.attack_s + 10 - time.monotonic()))
            time.sleep(1.0)
        worst, asked, failures = probe.stop()
        probe = None
        up = seeder.p.poll() is None
        rss = seeder.peak_rss_mb() if up else None
    finally:
        if probe is not None:
            probe.stop()
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
        if attacker is not None:
            attacker.wait()
        for n in nodes:
            n.stop()
    bad = [n.name for n in nodes[1:] if _digest(n.data) != hashlib.sha1(data).hexdigest()]
    if bad:
        raise SystemExit(f"hostile: {tag}: WRONG FILE on {', '.join(bad)}")
    shutil.rmtree(rundir)
    r = {"kind": kind, "sync_s": sync_s, "seeder_peak_rss_mb": rss, "seeder_up": up,
         "status_worst_s": worst, "status_asked": asked, "status_failures": failures,
         "cpu_seeder_s": cpu[0], "cpu_attacker_s": cpu[1], "cpu_leechers_s": cpu[2],
         "load1": os.getloadavg()[0]}
    print(f"  {tag:<13} sync {sync_s:6.2f} s  seeder peak RSS {rss or 0:5.0f} MB  STATUS worst "
          f"{worst or 0:.3f} s of {asked} ({len(failures)} unanswered)  up {up}  CPU while syncing: seeder "
          f"{cpu[0]:.2f} s, attacker {cpu[1]:.2f} s, leechers {cpu[2]:.2f} s", flush=True)
    return r


def _digest(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def markdown(res, a):
    base = [r for r in res if r["kind"] is None]
    t_base = statistics.median(r["sync_s"] for r in base)
    rss_base = max(r["seeder_peak_rss_mb"] for r in base)
    L = [f"Honest swarm: 1 seeder + {a.leechers} leechers, {a.size >> 20} MiB in {a.piece >> 10} KiB pieces, "
         f"loopback. Attacker: {a.conns} connections flooding the seeder for {a.attack_s:g} s"
         f"{f' (nice {a.attacker_nice})' if a.attacker_nice else ''}. Unattacked: "
         f"{t_base:.2f} s median ({min(r['sync_s'] for r in base):.2f}-{max(r['sync_s'] for r in base):.2f}, "
         f"{len(base)} runs), seeder peak RSS {rss_base:.0f} MB.", "",
         f"| attack | swarm time | × unattacked (goal ≤ {RATIO_GOAL}) | seeder peak RSS | over unattacked "
         f"(goal < {RSS_MARGIN_MB} MiB) | STATUS worst (goal < {STATUS_WITHIN_S:g} s) | seeder up "
         f"| CPU s while syncing: seeder / attacker / leechers |",
         "|---|---|---|---|---|---|---|---|"]
    for r in res:
        if r["kind"] is None:
            continue
        st = "no answer" if r["status_failures"] else f"{r['status_worst_s']:.3f} s"
        L.append(f"| {r['kind']} | {r['sync_s']:.2f} s | {r['sync_s'] / t_base:.2f} | "
                 f"{r['seeder_peak_rss_mb'] or 0:.0f} MB | {(r['seeder_peak_rss_mb'] or 0) - rss_base:+.0f} MB | "
                 f"{st} ({r['status_asked']} asked) | {'yes' if r['seeder_up'] else 'NO'} | "
                 f"{r['cpu_seeder_s']:.2f} / {r['cpu_attacker_s']:.2f} / {r['cpu_leechers_s']:.2f} |")
    return "\n".join(L) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default="all", help=f"comma list of {', '.join(KINDS)}, or all")
    p.add_argument("--attack-s", type=float, default=30.0, help="how long each attack lasts")
    p.add_argument("--conns", type=int, default=8, help="the attacker's connections")
    p.add_argument("--leechers", type=int, default=4)
    p.add_argument("--size", type=int, default=512 << 20, help="file bytes")
    p.add_argument("--piece", type=int, default=256 << 10, help="piece bytes")
    p.add_argument("--attacker-nice", type=int, default=0, metavar="N",
                   help="run the attacker at this nice level (its CPU is another machine's in real life)")
    p.add_argument("--tmp", default="/var/tmp", help="parent of the work dir (on disk, not tmpfs)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "out"), help="hostile.md and .json go here")
    a = p.parse_args(argv)
    a.kinds = list(KINDS) if a.kinds == "all" else [k.strip() for k in a.kinds.split(",") if k.strip()]
    for k in a.kinds:
        if k not in KINDS:
            p.error(f"unknown kind {k} (have {', '.join(KINDS)})")
    if not 1 <= a.leechers <= 39 or not 1 <= a.conns <= 60:
        p.error("1..39 leechers (127.0.0.21-59), 1..60 attacker connections (127.0.0.60 up)")
    return a


def free_port():
    import socket
    with socket.socket() as s:
        s.bind((SEEDER_IP, 0))
        return s.getsockname()[1]


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    a = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # a killed run still stops its nodes
    py = sys.executable
    data, info = make_file(a.size, a.piece)
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="p2ph-", dir=a.tmp)
    logdir = os.path.join(ROOT, "bench", "out", "hostile-logs")
    os.makedirs(logdir, exist_ok=True)
    res = []
    try:
        print(f"hostile: port {port}, work dir {workdir}, logs in {logdir}", flush=True)
        for n, kind in enumerate(a.kinds):  # each attack next to a run alone: drift hits both alike
            res.append(one_run(a, py, workdir, logdir, data, info, port, None, n + 1))
            res.append(one_run(a, py, workdir, logdir, data, info, port, kind, n + 1))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    md = markdown(res, a)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "hostile.json"), "w") as f:
        json.dump({"args": {k: v for k, v in vars(a).items()}, "runs": res}, f, indent=1)
    with open(os.path.join(a.out, "hostile.md"), "w") as f:
        f.write(md)
    print()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
