"""Time from process start to serving: spawn a node holding a complete file, then, as a client,
request the first piece until it arrives; repeat and report the median. Loopback only.

    python3 bench/startup.py [--size 16M] [--piece 256K] [--runs 10]
"""

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "solution"))
from node import wire  # noqa: E402

BIND = "127.0.0.201"
PORT = 7400
DEADLINE_S = 10.0  # a node that is not serving by then has failed


def first_piece_served(piece_len):
    """Connect, request piece 0, return once its bytes arrived; None while not yet listening."""
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


def one_run(data_path, conf_path, piece_len):
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "node", "--data", data_path, "--conf", conf_path,
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="16M")
    ap.add_argument("--piece", default="256K")
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    size, piece = parse_size(args.size), parse_size(args.piece)
    with tempfile.TemporaryDirectory(prefix="p2p-startup-") as d:
        data = os.urandom(size)
        data_path, conf_path = os.path.join(d, "data.bin"), os.path.join(d, "torrent.conf")
        with open(data_path, "wb") as f:
            f.write(data)
        parts = [hashlib.sha1(data[i:i + piece]).hexdigest() for i in range(0, size, piece)]
        with open(conf_path, "w") as f:
            json.dump({"Peers": [], "FileInfo": {"Size": size, "PartSize": piece, "Parts": parts}}, f)
        times = [one_run(data_path, conf_path, min(piece, size)) for _ in range(args.runs)]
    print(f"start to first piece served ({args.size} file, {args.piece} pieces, {args.runs} runs): "
          f"median {statistics.median(times) * 1000:.0f} ms, min {min(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
