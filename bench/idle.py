"""What a settled swarm costs: CPU per node while N complete nodes sit idle in the lab.

    python3 bench/idle.py [--nodes 60] [--discovery on] [--solution DIR ...] [--python PY]   # root

Every node starts with the whole file, an empty Peers list and discovery as given, one every
START_GAP_S (as containers are started one by one); once the last has run SETTLE_S, the CPU each
node uses over WINDOW_S is read from /proc. Several --solution trees run one after another, in the
same lab, for a side-by-side figure. Run it under the heavy lock on a quiet machine.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import lab  # noqa: E402
from hostile import cpu_s, make_file  # noqa: E402

START_GAP_S = 0.2
SETTLE_S = 5.0
WINDOW_S = 10.0
SIZE, PIECE = 1 << 20, 64 << 10


def run(the_lab, python, solution, discovery, work):
    """Start every node, let them settle, and return each one's CPU (ms per second) over WINDOW_S."""
    data, info = make_file(SIZE, PIECE)
    conf = os.path.join(work, "torrent.conf")
    with open(conf, "w") as f:
        json.dump({"Peers": [], "FileInfo": info}, f)
    procs = []
    try:
        for i in range(the_lab.n):
            path = os.path.join(work, f"d{i}.bin")
            with open(path, "wb") as f:
                f.write(data)
            argv = [python, "-m", "node", "--data", path, "--conf", conf, "--state", path + ".state.json",
                    "--discovery", discovery, "--log-level", "warning"]
            procs.append(subprocess.Popen(the_lab.argv(i, argv), cwd=solution, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            time.sleep(START_GAP_S)
        time.sleep(SETTLE_S)
        dead = [i for i, p in enumerate(procs) if p.poll() is not None]
        if dead:
            raise SystemExit(f"idle: nodes {dead} exited (try --python with gevent installed)")
        before, t0 = {p.pid: cpu_s(p.pid) for p in procs}, time.monotonic()
        time.sleep(WINDOW_S)
        elapsed = time.monotonic() - t0
        return sorted((cpu_s(p.pid) - before[p.pid]) / elapsed * 1000 for p in procs)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=60)
    ap.add_argument("--discovery", default="on", choices=("on", "off"))
    ap.add_argument("--python", default=sys.executable, help="interpreter the nodes run with")
    ap.add_argument("--solution", action="append", metavar="DIR", help="our node's tree (default: solution/)")
    a = ap.parse_args()
    trees = a.solution or [os.path.join(os.path.dirname(HERE), "solution")]
    with lab.Lab(a.nodes) as the_lab:
        the_lab.release()
        for tree in trees:
            work = tempfile.mkdtemp(prefix="p2p-idle-", dir="/var/tmp")
            try:
                per = run(the_lab, a.python, os.path.abspath(tree), a.discovery, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(f"{tree}: {a.nodes} idle nodes, discovery {a.discovery}: CPU per node {statistics.median(per):.1f} "
                  f"ms/s (max {per[-1]:.1f}), all nodes {sum(per) / 1000:.3f} cores", flush=True)


if __name__ == "__main__":
    main()
