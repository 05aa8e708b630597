"""What one control frame costs a node: CPU per HAVE or REJECT it reads, on loopback.

    python3 bench/frames.py [--links 16] [--period 0.5] [--secs 20] [--runs 3]
                            [--solution DIR ...] [--floor gevent,selectors] [--python PY] [--perf FILE]

One node (discovery off, bound to 127.0.0.2) knows a file of 128 pieces and holds none of it.
`--links` scripted peers (from 127.0.0.20 on) each say HELLO and an empty BITFIELD, then announce
one random piece (HAVE) every `--period` seconds, on phases of their own, and answer every REQUEST
of the node with a REJECT, as a busy holder on a capped link does. Over `--secs` the node's CPU is
read from /proc/PID/task/*/schedstat (nanoseconds: exact, where the tick-sampled user and system
times of a process move in 4 ms steps here), with its voluntary context switches (its wake-ups).
Several --solution trees run interleaved, run by run, for a side-by-side figure; `--floor` adds
the same traffic answered by bench/frames_floor.py, which has no node logic (the floor any Python
node pays here, with gevent or with one stdlib selectors loop). `--perf FILE`
records the node with `perf record -e cpu-clock` over the timed span (then `perf report -i FILE
--sort dso`). Needs no root: loopback only, nothing dials out but the peers here.
"""

import argparse
import glob
import hashlib
import json
import os
import random
import selectors
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from frames_floor import BITFIELD, HAVE, HELLO, REJECT, REQUEST, frame, take_frames

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NODE_IP, PEER_IP = "127.0.0.2", "127.0.0.{}"
N_PIECES, PIECE = 128, 256 << 10  # W1's file; its bytes are never sent, only announced
WARMUP_S = 4.0  # links up, the first requests and rejects gone by, before the clock starts


def node_cpu(pid):
    """(CPU ns, voluntary context switches) of all the process's threads so far."""
    ns = switches = 0
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(task + "/schedstat") as f:
                ns += int(f.read().split()[0])
            with open(task + "/status") as f:
                switches += sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
        except OSError:
            pass  # a thread that ended meanwhile
    return ns, switches


class Peers:
    """The scripted peers, all on one selector: HAVE on each one's phase, REJECT per REQUEST."""

    def __init__(self, port, meta_id, links, period, seed):
        self.period, self.rng = period, random.Random(seed)
        self.socks, self.bufs, self.due = [], {}, {}
        self.haves = self.rejects = 0
        self.sel = selectors.DefaultSelector()
        for i in range(links):
            hello = b"P2PS\x01" + os.urandom(8) + struct.pack(">H", 7000) + meta_id  # a node id each
            s = socket.create_connection((NODE_IP, port), timeout=5, source_address=(PEER_IP.format(20 + i), 0))
            s.sendall(frame(HELLO, hello) + frame(BITFIELD, bytes((N_PIECES + 7) // 8)))
            s.settimeout(5.0)  # select() says when to read; a send that cannot go out in 5 s is a failure
            self.socks.append(s)
            self.bufs[s] = bytearray()
            self.due[s] = time.monotonic() + self.rng.random() * period
            self.sel.register(s, selectors.EVENT_READ)

    def run_until(self, end):
        while (now := time.monotonic()) < end:
            for s, due in self.due.items():
                if now >= due:
                    s.sendall(frame(HAVE, struct.pack(">II", self.rng.randrange(N_PIECES), 1)))
                    self.haves += 1
                    self.due[s] = due + self.period
            wait = max(0.0, min(min(self.due.values()), end) - time.monotonic())
            for key, _ in self.sel.select(wait):
                self._read(key.fileobj)

    def _read(self, s):
        data = s.recv(65536)
        if not data:
            raise RuntimeError("the node closed a link")
        buf = self.bufs[s]
        buf += data
        for kind, payload in take_frames(buf):
            if kind == REQUEST:
                s.sendall(frame(REJECT, payload))
                self.rejects += 1

    def close(self):
        for s in self.socks:
            s.close()
        self.sel.close()


def start(python, impl, port, work, conf):
    """Start `impl` listening on NODE_IP:port: a node tree, or "floor-gevent" / "floor-selectors"."""
    listen = ["--bind", NODE_IP, "--port", str(port)]
    if impl.startswith("floor-"):
        return subprocess.Popen([python, os.path.join(HERE, "frames_floor.py"), impl[len("floor-"):], *listen])
    return subprocess.Popen([python, "-m", "node", *listen, "--data", os.path.join(work, "data.bin"), "--conf", conf,
                             "--discovery", "off", "--log-level", "warning"],
                            cwd=impl, env=dict(os.environ, PYTHONPATH=impl))


def one_run(python, impl, args, seed, perf):
    work = tempfile.mkdtemp(prefix="p2pframes-")
    node = None
    try:
        rng = random.Random(seed)
        parts = [hashlib.sha1(rng.randbytes(32)).digest() for _ in range(N_PIECES)]
        size = N_PIECES * PIECE
        meta_id = hashlib.sha1(b"%d:%d:" % (size, PIECE) + b"".join(parts)).digest()
        conf = os.path.join(work, "torrent.conf")
        with open(conf, "w") as f:
            json.dump({"Peers": [], "FileInfo": {"Size": size, "PartSize": PIECE,
                                                 "Parts": [p.hex() for p in parts]}}, f)
        port = random.Random(os.getpid() ^ time.monotonic_ns()).randrange(20000, 40000)
        node = start(python, impl, port, work, conf)
        for _ in range(100):  # until it listens (this probe says no HELLO: the node drops it)
            try:
                socket.create_connection((NODE_IP, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        peers = Peers(port, meta_id, args.links, args.period, seed)
        peers.run_until(time.monotonic() + WARMUP_S)
        haves, rejects = peers.haves, peers.rejects
        cpu0, t0 = node_cpu(node.pid), time.monotonic()
        rec = None
        if perf:
            rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999", "-p", str(node.pid),
                                    "-o", perf, "--", "sleep", str(args.secs)])
        peers.run_until(t0 + args.secs)
        cpu1, t1 = node_cpu(node.pid), time.monotonic()
        if rec is not None:
            rec.wait(timeout=30)
        frames_in = peers.haves - haves + peers.rejects - rejects
        peers.close()
        if node.poll() is not None:
            raise RuntimeError(f"the node exited early ({node.returncode})")
        ms = (cpu1[0] - cpu0[0]) / 1e6
        wakeups = cpu1[1] - cpu0[1]
        return dict(frames_in=frames_in, per_s=frames_in / (t1 - t0), cpu_ms=ms, us_per_frame=1000 * ms / frames_in,
                    wakeups=wakeups, us_per_wakeup=1000 * ms / max(1, wakeups))
    finally:
        if node is not None:
            node.terminate()
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--links", type=int, default=16)
    ap.add_argument("--period", type=float, default=0.5, help="seconds between one peer's HAVEs")
    ap.add_argument("--secs", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--solution", action="append", help="node tree(s); default: this checkout's")
    ap.add_argument("--floor", default="", help="also run these floors: gevent, selectors")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--perf", help="perf record the node's timed span into this file (the last run's)")
    args = ap.parse_args()
    impls = [os.path.abspath(t) for t in args.solution or [os.path.join(REPO, "solution")]]
    impls += [f"floor-{f}" for f in args.floor.split(",") if f]
    results = {i: [] for i in impls}
    for k in range(args.runs):
        for impl in impls:
            r = one_run(args.python, impl, args, seed=k + 1, perf=args.perf)
            results[impl].append(r)
            print(f"{impl}  run {k + 1}: {r['frames_in']} frames in ({r['per_s']:.0f}/s), CPU {r['cpu_ms']:.0f} ms, "
                  f"{r['us_per_frame']:.0f} us a frame, {r['wakeups']} wake-ups, {r['us_per_wakeup']:.0f} us each",
                  flush=True)
    for impl, rs in results.items():
        per = [r["us_per_frame"] for r in rs]
        print(f"{impl}: us a frame median {statistics.median(per):.0f} ({min(per):.0f}-{max(per):.0f}), "
              f"wake-ups per frame {statistics.median(r['wakeups'] / r['frames_in'] for r in rs):.2f}")


if __name__ == "__main__":
    main()
