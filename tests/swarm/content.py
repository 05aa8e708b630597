"""The data file of a run and its per-node variants.

`write_master` makes the correct file from a seed (so a run is reproducible) and returns its
FileInfo: the piece hashes a torrent.conf carries plus the whole-file digest the harness checks.
`materialize` turns a node's `Content` (correct, empty, garbage, partial, ...) into a file.
"""
import hashlib
import os
import random
import shutil
from dataclasses import dataclass, field

# Generation and copying work in 4 MiB chunks: big enough to run at disk speed, small enough
# that a 1 GB file never sits in memory.
CHUNK = 4 << 20

KINDS = ("correct", "empty", "missing", "garbage", "partial", "oversize", "undersize")


@dataclass(frozen=True)
class FileInfo:
    """What the swarm must converge to: size, piece size, piece SHA-1s, whole-file SHA-1."""
    size: int
    piece: int
    parts: tuple
    sha1: str

    def conf(self):
        """The FileInfo object of torrent.conf."""
        return {"Size": self.size, "PartSize": self.piece, "Parts": list(self.parts)}

    def piece_span(self, i):
        """(offset, length) of piece i; the last piece may be short."""
        start = i * self.piece
        return start, min(self.piece, self.size - start)


@dataclass(frozen=True)
class Content:
    """What one node's /data.bin holds before start.

    kind: one of KINDS. pieces: for "partial", the indexes that are correct (others garbage).
    length: for "garbage"/"undersize"/"oversize", the file length in bytes.
    """
    kind: str
    pieces: frozenset = field(default_factory=frozenset)
    length: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown content kind {self.kind!r}")

    def describe(self, n_pieces):
        """Short human label, e.g. 'partial(12/40)' or 'oversize(+517B)'."""
        if self.kind == "partial":
            return f"partial({len(self.pieces)}/{n_pieces})"
        if self.kind in ("garbage", "undersize", "oversize"):
            return f"{self.kind}({self.length}B)"
        return self.kind


class _PieceHasher:
    """Feeds a byte stream and collects the SHA-1 of each fixed-size piece and of the whole."""

    def __init__(self, piece):
        self.piece, self.filled = piece, 0
        self.current, self.whole, self.parts = hashlib.sha1(), hashlib.sha1(), []

    def update(self, data):
        self.whole.update(data)
        view, pos = memoryview(data), 0
        while pos < len(view):
            take = min(self.piece - self.filled, len(view) - pos)
            self.current.update(view[pos:pos + take])
            self.filled, pos = self.filled + take, pos + take
            if self.filled == self.piece:
                self.parts.append(self.current.hexdigest())
                self.current, self.filled = hashlib.sha1(), 0

    def finish(self):
        if self.filled:
            self.parts.append(self.current.hexdigest())
        return tuple(self.parts), self.whole.hexdigest()


def write_master(path, size, piece, seed):
    """Write SIZE seeded-random bytes to PATH; return the FileInfo (piece size PIECE)."""
    rng, hasher = random.Random(seed), _PieceHasher(piece)
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = rng.randbytes(min(CHUNK, left))
            hasher.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    parts, whole = hasher.finish()
    return FileInfo(size=size, piece=piece, parts=parts, sha1=whole)


def _write_garbage(fd, offset, length, rng):
    """pwrite LENGTH random bytes at OFFSET."""
    end = offset + length
    while offset < end:
        n = min(CHUNK, end - offset)
        os.pwrite(fd, rng.randbytes(n), offset)
        offset += n


def _copy_prefix(master, dest, length):
    """dest := the first LENGTH bytes of master."""
    with open(master, "rb") as src, open(dest, "wb") as out:
        left = length
        while left:
            chunk = src.read(min(CHUNK, left))
            out.write(chunk)
            left -= len(chunk)


def materialize(content, master, info, dest, seed):
    """Create DEST holding CONTENT (garbage drawn from SEED). Return DEST, or None for 'missing'."""
    rng, kind = random.Random(seed), content.kind
    if kind == "missing":
        return None
    if kind in ("correct", "partial", "oversize"):
        shutil.copyfile(master, dest)
    elif kind == "undersize":
        _copy_prefix(master, dest, content.length)
    else:  # empty, garbage
        open(dest, "wb").close()
    fd = os.open(dest, os.O_WRONLY)
    try:
        if kind == "garbage":
            _write_garbage(fd, 0, content.length, rng)
        elif kind == "oversize":
            _write_garbage(fd, info.size, content.length - info.size, rng)
        elif kind == "partial":
            for i in range(len(info.parts)):
                if i not in content.pieces:
                    _write_garbage(fd, *info.piece_span(i), rng)
    finally:
        os.close(fd)
    return dest
