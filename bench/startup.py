"""Start-up cost: CPU from process start to listening for one node, and wall time for many.

    python3 bench/startup.py [--runs 20] [--impl ours,libtorrent]   # one node at a time, loopback
    python3 bench/startup.py --nodes 60                             # 60 at once (root: lab.py)
    python3 bench/startup.py --serve [--size 16M --piece 256K]      # start -> first piece served

What lives here: spawning nodes behind their start gates (gate.py, lt_node.py: each stops itself
right after its `listening` line) and reading what they cost. A stopped node is killed and reaped
with wait4(), whose rusage gives its user+system CPU in microseconds (all threads, from fork on;
/proc's 10 ms ticks are too coarse for one node). Baseline: `python -c pass` (the interpreter's own
start-up, site included), the floor no node can go below.

One node at a time runs on loopback (127.0.0.201, discovery off, no peers). `--nodes N` starts N
nodes at once, one per lab host with the LAN held (lab.py: no frame crosses), every host's conf
listing every other host, as the bench does: wall time is first spawn -> all stopped at the gate.
Run it under the heavy lock (`flock /tmp/p2p-heavy.lock ...`) on a quiet machine.
"""

import argparse
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIND = "127.0.0.201"  # loopback only: one node at a time never touches a real network
PORT = 7400
DEADLINE_S = 30.0  # spawn -> stopped at the gate (60 nodes on 2 cores take a few seconds)
IMPLS = ("ours", "libtorrent")


def node_argv(impl, py, data, conf, bind, port):
    if impl == "ours":
        return [py, os.path.join(HERE, "gate.py"), "--data", data, "--conf", conf,
                "--state", data + ".state.json", "--bind", bind, "--port", str(port),
                "--discovery", "off", "--log-level", "info"]
    return [py, os.path.join(HERE, "lt_node.py"), "--data", data, "--conf", conf,
            "--bind", bind, "--port", str(port)]


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def wait_gated(procs, t0):
    """Wait until every process is stopped at its gate -> {pid: monotonic time it was seen so}."""
    seen = {}
    while len(seen) < len(procs):
        for p in procs:
            if p.pid not in seen:
                st = proc_state(p.pid)
                if st == "T":
                    seen[p.pid] = time.monotonic()
                elif st in "ZX":
                    raise SystemExit(f"startup: process {p.pid} exited before listening")
        if time.monotonic() - t0 > DEADLINE_S:
            raise SystemExit(f"startup: only {len(seen)} of {len(procs)} listening after {DEADLINE_S} s")
        time.sleep(0.0005)
    return seen


def reap_cpu(p):
    """SIGKILL a stopped process, reap it -> its user+system CPU seconds."""
    os.kill(p.pid, signal.SIGKILL)
    _, _, ru = os.wait4(p.pid, 0)
    p.returncode = -9  # reaped here: keep Popen from waiting on it again
    return ru.ru_utime + ru.ru_stime


def baseline_cpu(py):
    p = subprocess.Popen([py, "-c", "pass"])
    _, _, ru = os.wait4(p.pid, 0)
    p.returncode = 0
    return ru.ru_utime + ru.ru_stime


def write_files(d, size, piece, peers):
    data = os.urandom(size)
    data_path, conf_path = os.path.join(d, "data.bin"), os.path.join(d, "torrent.conf")
    with open(data_path, "wb") as f:
        f.write(data)
    parts = [hashlib.sha1(data[i:i + piece]).hexdigest() for i in range(0, size, piece)]
    with open(conf_path, "w") as f:
        json.dump({"Peers": peers, "FileInfo": {"Size": size, "PartSize": piece, "Parts": parts}}, f)
    return data_path, conf_path


def compile_tree(py, solution):
    """Byte-compile a solution tree as the image's `compileall` step does: a shell with
    PYTHONDONTWRITEBYTECODE would otherwise make every node compile its modules (~8 ms)."""
    subprocess.run([py, "-m", "compileall", "-q", os.path.join(solution, "node")], check=True)


def one_node(impl, py, data, conf):
    """(CPU s, wall s) from spawn to listening for one node on loopback."""
    t0 = time.monotonic()
    p = subprocess.Popen(node_argv(impl, py, data, conf, BIND, PORT), stdout=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    try:
        t = wait_gated([p], t0)[p.pid]
        return reap_cpu(p), t - t0
    finally:
        if p.returncode is None:
            p.kill()
            p.wait()


def many_nodes(impl, py, n, d, size, piece):
    """(CPU s per node, wall s first spawn -> all listening) for n nodes started at once."""
    sys.path.insert(0, HERE)
    import lab
    with lab.Lab(n) as lab_:
        lab_.hold()
        files = []
        for i in range(n):
            hd = os.path.join(d, f"h{i}")
            os.makedirs(hd)
            files.append(write_files(hd, size, piece, [ip for ip in lab_.ip if ip != lab_.ip[i]]))
        procs = []
        t0 = time.monotonic()
        try:
            for i, (data, conf) in enumerate(files):
                argv = lab_.argv(i, node_argv(impl, py, data, conf, lab_.ip[i], PORT))
                procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
            wall = max(wait_gated(procs, t0).values()) - t0
            held = sum(sent for sent, _ in lab_.port_counters().values())
            cpu = [reap_cpu(p) for p in procs]
        finally:
            for p in procs:
                if p.returncode is None:
                    p.kill()
                    p.wait()
    return cpu, wall, held


def first_piece_served(piece_len):
    """Connect, request piece 0, return once its bytes arrived; None while not yet listening."""
    from node import wire
    try:
        sock = socket.create_connection((BIND, PORT), timeout=DEADLINE_S)
    except OSError:
        return None
    with sock:
        sock.sendall(wire.encode(wire.Hello(os.urandom(8), 0)) + wire.encode(wire.Request(0, 1)))
        dec = wire.Decoder()
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return None
            for msg in dec.feed(data):
                if isinstance(msg, wire.Pieces) and len(msg.data) == piece_len:
                    return True
                if isinstance(msg, wire.Reject):  # listening, but piece 0 not verified yet: ask again
                    sock.sendall(wire.encode(wire.Request(0, 1)))


def serve_run(py, data_path, conf_path, piece_len):
    t0 = time.monotonic()
    proc = subprocess.Popen([py, "-m", "node", "--data", data_path, "--conf", conf_path,
                             "--bind", BIND, "--port", str(PORT), "--discovery", "off",
                             "--log-level", "warning"], cwd=os.path.join(ROOT, "solution"))
    try:
        while time.monotonic() - t0 < DEADLINE_S:
            if first_piece_served(piece_len):
                return time.monotonic() - t0
            time.sleep(0.002)
        raise RuntimeError("node did not serve within the deadline")
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def parse_size(text):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * mult[text[-1].upper()] if text[-1].upper() in mult else int(text)


def ms(xs):
    return (f"median {statistics.median(xs) * 1000:.1f} ms (min {min(xs) * 1000:.1f}, "
            f"max {max(xs) * 1000:.1f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="one-node runs per implementation")
    ap.add_argument("--impl", default="ours,libtorrent")
    ap.add_argument("--nodes", type=int, default=0, help="start this many at once (root; lab.py)")
    ap.add_argument("--python", default=sys.executable, help="interpreter the nodes run with")
    ap.add_argument("--solution", action="append", default=[], metavar="DIR",
                    help="one node at a time: also time ours from this copy of solution/ "
                         "(repeatable; side by side with the checkout's)")
    ap.add_argument("--serve", action="store_true", help="time start -> first piece served instead")
    ap.add_argument("--size", default="1M")
    ap.add_argument("--piece", default="64K")
    a = ap.parse_args()
    impls = [s for s in a.impl.split(",") if s]
    size, piece = parse_size(a.size), parse_size(a.piece)
    sys.path.insert(0, os.path.join(ROOT, "solution"))
    for sol in [os.path.join(ROOT, "solution")] + a.solution:
        compile_tree(a.python, sol)
    print(f"load {os.getloadavg()[0]:.2f}; python {a.python}")
    with tempfile.TemporaryDirectory(prefix="p2pb-startup-", dir="/var/tmp") as d:
        if a.serve:
            data, conf = write_files(d, size, piece, [])
            times = [serve_run(a.python, data, conf, min(piece, size)) for _ in range(a.runs)]
            print(f"start to first piece served ({a.size} file, {a.piece} pieces): {ms(times)}")
            return 0
        if a.nodes:
            for impl in impls:
                sub = os.path.join(d, impl)
                os.makedirs(sub)
                cpu, wall, held = many_nodes(impl, a.python, a.nodes, sub, size, piece)
                print(f"{impl:<10} {a.nodes} nodes at once: all listening after {wall:.2f} s; "
                      f"CPU per node {ms(cpu)}; frames sent while held {held}")
            return 0
        data, conf = write_files(d, size, piece, [])
        base = [baseline_cpu(a.python) for _ in range(a.runs)]
        variants = [(impl, None) for impl in impls] + [("ours", s) for s in a.solution]
        res = {v: [] for v in variants}
        for _ in range(a.runs):  # interleaved, so drift in the machine's load hits all alike
            for impl, sol in variants:
                os.environ.pop("BENCH_SOLUTION", None)
                if sol:
                    os.environ["BENCH_SOLUTION"] = sol
                res[(impl, sol)].append(one_node(impl, a.python, data, conf))
        os.environ.pop("BENCH_SOLUTION", None)
        print(f"{'python -c pass':<14} CPU {ms(base)}")
        for impl, sol in variants:
            print(f"{impl + (' ' + sol if sol else ''):<14} CPU {ms([c for c, _ in res[(impl, sol)]])}; "
                  f"wall {ms([w for _, w in res[(impl, sol)]])}")
    print(f"load after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
