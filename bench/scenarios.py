"""The bench's scenarios and the files each host starts with.

What lives here: the scenario table (issue 4), the seed file of each scenario (random bytes, made
once per bench invocation, the same for every run and both implementations), each host's starting
data file and torrent.conf, the bytes that must move, and the check of a host's final file.
"""

import hashlib
import json
import os
import random
from dataclasses import dataclass

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
GEN_CHUNK = 16 * MiB  # seed files are generated and hashed in chunks of this size (bounded memory)
COPY_CHUNK = 64 * MiB  # copy_file_range / hashing chunk for per-run host files
MANY_SOURCE_COPIES = (1, 3)  # many-source: each piece is correct on 1..3 hosts, garbage elsewhere


@dataclass(frozen=True)
class Scenario:
    name: str
    nodes: int
    size: int  # bytes
    piece: int  # bytes
    layout: str  # "one-seeder" (host 0 has the file, the others none) or "many-source"
    seed: int  # random seed of the content and of the many-source layout

    @property
    def n_pieces(self):
        return -(-self.size // self.piece)

    def describe(self):
        return f"{self.nodes} nodes, {human(self.size)}, {human(self.piece)} pieces, {self.layout}"


SCENARIOS = {s.name: s for s in (
    Scenario("S1", 2, 1 * GiB, 256 * KiB, "one-seeder", 1),
    Scenario("S2", 16, 64 * MiB, 256 * KiB, "one-seeder", 2),
    Scenario("S3", 60, 4 * MiB, 64 * KiB, "one-seeder", 3),
    Scenario("S4", 16, 16 * MiB, 128 * KiB, "many-source", 4),
    Scenario("S5", 10, 1 * MiB, 4 * KiB, "one-seeder", 5),
    Scenario("S6", 4, 1 * MiB, 128, "one-seeder", 6),
)}


def human(n):
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


class Seed:
    """A scenario's correct file on disk, with its piece hashes and whole-file SHA-1."""

    def __init__(self, sc, workdir):
        self.sc = sc
        self.path = os.path.join(workdir, f"seed-{sc.name}.bin")
        rng = random.Random(sc.seed)
        whole = hashlib.sha1()
        parts = []
        with open(self.path, "wb") as f:
            left = sc.size
            while left:
                # chunks are whole pieces (GEN_CHUNK and every piece size here divide evenly)
                chunk = rng.randbytes(min(left, GEN_CHUNK))
                whole.update(chunk)
                view = memoryview(chunk)
                parts += [hashlib.sha1(view[i:i + sc.piece]).hexdigest() for i in range(0, len(chunk), sc.piece)]
                f.write(chunk)
                left -= len(chunk)
        assert len(parts) == sc.n_pieces
        self.parts = parts
        self.sha1 = whole.hexdigest()
        self.holders = self._layout(random.Random(sc.seed * 7919))

    def _layout(self, rng):
        """holders[h] = set of pieces host h starts with correct (None: no file at all)."""
        sc = self.sc
        if sc.layout == "one-seeder":
            return [set(range(sc.n_pieces))] + [None] * (sc.nodes - 1)
        holders = [set() for _ in range(sc.nodes)]
        for p in range(sc.n_pieces):
            for h in rng.sample(range(sc.nodes), rng.randint(*MANY_SOURCE_COPIES)):
                holders[h].add(p)
        return holders

    def bytes_to_move(self):
        """Bytes that must reach hosts that lack them: the sum over hosts of what each is missing."""
        sc = self.sc
        total = 0
        for held in self.holders:
            have = sum(min(sc.piece, sc.size - p * sc.piece) for p in held or ())
            total += sc.size - have
        return total

    def prepare(self, rundir, ips, port):
        """Lay out each host's directory: torrent.conf (full conf: every other host as a peer) and
        data.bin as the layout says. Returns [(data_path, conf_path)] per host."""
        sc = self.sc
        info = {"Size": sc.size, "PartSize": sc.piece, "Parts": self.parts}
        paths = []
        garbage = random.Random(sc.seed + 1).randbytes(sc.piece)  # never hashes right: random
        for h, held in enumerate(self.holders):
            d = os.path.join(rundir, f"h{h}")
            os.makedirs(d)
            conf, data = os.path.join(d, "torrent.conf"), os.path.join(d, "data.bin")
            with open(conf, "w") as f:
                json.dump({"Peers": [ip for i, ip in enumerate(ips) if i != h], "FileInfo": info}, f)
            if held is not None and len(held) == sc.n_pieces:
                _copy(self.path, data)
            elif held is not None:
                self._partial(data, held, garbage)
            paths.append((data, conf))
        return paths

    def _partial(self, data, held, garbage):
        sc = self.sc
        with open(self.path, "rb") as src, open(data, "wb") as dst:
            for p in range(sc.n_pieces):
                n = min(sc.piece, sc.size - p * sc.piece)
                dst.write(os.pread(src.fileno(), n, p * sc.piece) if p in held else garbage[:n])
            dst.flush()
            os.fsync(dst.fileno())

    def check(self, path):
        """None if the file at `path` is exactly the seed, else what is wrong."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "missing"
        if st.st_size != self.sc.size:
            return f"size {st.st_size}, want {self.sc.size}"
        h = hashlib.sha1()
        with open(path, "rb") as f:
            while chunk := f.read(COPY_CHUNK):
                h.update(chunk)
        return None if h.hexdigest() == self.sha1 else f"sha1 {h.hexdigest()}, want {self.sha1}"


def _copy(src, dst):
    """Copy with the kernel (copy_file_range), then fsync so no writeback runs during the timing."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        left = os.fstat(fi.fileno()).st_size
        while left:
            n = os.copy_file_range(fi.fileno(), fo.fileno(), min(left, COPY_CHUNK))
            if n == 0:
                raise OSError(f"copy_file_range returned 0 with {left} bytes left")
            left -= n
        os.fsync(fo.fileno())


PREWRITE_SIZES = tuple(4 * KiB << 2 * i for i in range(6))  # 4 KiB, 16 KiB ... 4 MiB


def prewrite(workdir, nbytes, sizes=PREWRITE_SIZES):
    """Write and delete about `nbytes` once per write size in `sizes` (no fsync): freshly freed
    memory on this VM is several times slower to write into, so each timed run first makes its
    page cache memory warm. Once per size, because the kernel gives a write a page-cache folio
    of about the write's size, and the free memory of each size is warmed only by writes of that
    size: warmed with 4 MiB writes alone, S3's nodes (writing 64-256 KiB) pwrote at 0.4 GB/s of
    CPU time instead of 2-4 (bench/README.md, "Warm memory")."""
    path = os.path.join(workdir, "prewrite.tmp")
    buf = memoryview(b"\x5a" * max(sizes))
    for size in sizes:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for off in range(0, nbytes, size):
                os.pwrite(fd, buf[:min(size, nbytes - off)], off)
        finally:
            os.close(fd)
            os.unlink(path)
