#!/usr/bin/env python3
"""Make the inputs of docker-compose.yml in ./tmp: a random data1.bin (the seeder's), an EMPTY
data2.bin (the leecher's), and torrent1.conf / torrent2.conf each naming the other node's IP
with the full FileInfo.

    python3 scripts/compose-files.py [--size 1M] [--piece 64K] [--dir tmp] [--seed N]

The IPs follow docker-compose.yml: $P2P_NET.10 (seeder) and $P2P_NET.11 (leecher).
"""
import argparse
import hashlib
import json
import os
import random

DEFAULT_NET = "172.29.77"  # keep in sync with docker-compose.yml
SEEDER_HOST, LEECHER_HOST = 10, 11
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
CHUNK = 4 << 20  # generate and write 4 MiB at a time: disk speed without holding the file


def parse_size(text):
    """'64K' -> 65536, '1M' -> 1048576, '1500' -> 1500."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in UNITS:
        return int(float(text[:-1]) * UNITS[text[-1]])
    return int(text)


def write_random(path, size, piece, seed):
    """Write SIZE random bytes to PATH; return the SHA-1 hex of each PIECE-byte piece."""
    rng, parts, left = random.Random(seed), [], size
    with open(path, "wb") as out:
        while left:
            # whole pieces per chunk, so piece hashes never straddle two chunks
            chunk = rng.randbytes(min(left, max(piece, CHUNK // piece * piece)))
            parts += [hashlib.sha1(chunk[i:i + piece]).hexdigest()
                      for i in range(0, len(chunk), piece)]
            out.write(chunk)
            left -= len(chunk)
    return parts


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=1 << 20, help="file size (default 1M)")
    p.add_argument("--piece", type=parse_size, default=64 << 10, help="piece size (default 64K)")
    p.add_argument("--dir", default="tmp", help="output directory (default tmp)")
    p.add_argument("--seed", type=int, default=None, help="content seed (default random)")
    args = p.parse_args()
    net = os.environ.get("P2P_NET", DEFAULT_NET)
    seeder, leecher = f"{net}.{SEEDER_HOST}", f"{net}.{LEECHER_HOST}"
    os.makedirs(args.dir, exist_ok=True)
    parts = write_random(os.path.join(args.dir, "data1.bin"), args.size, args.piece, args.seed)
    open(os.path.join(args.dir, "data2.bin"), "wb").close()
    info = {"Size": args.size, "PartSize": args.piece, "Parts": parts}
    for name, peer in (("torrent1.conf", leecher), ("torrent2.conf", seeder)):
        with open(os.path.join(args.dir, name), "w") as fh:
            json.dump({"Peers": [peer], "FileInfo": info}, fh)
    print(f"compose-files: {args.size} B in {len(parts)} pieces of {args.piece} B; "
          f"seeder {seeder}, leecher {leecher}")


if __name__ == "__main__":
    main()
