"""storage: the data file under tmp_path. A missing file is created, an oversize one truncated, an
undersize one extended, all to exactly Size bytes and in place (same inode); scan reports exactly the
pieces whose SHA-1 matches; write() stores only verified pieces and leaves `skip` pieces alone.
Storage uses gevent's thread pool, which works when called from the test's main greenlet."""

import hashlib
import os
import random
import socket

import pytest

from node import storage
from node.config import FileInfo
from node.storage import Storage, good_pieces

SIZE, PIECE = 1000, 128  # 8 pieces, the last one 104 bytes


def make_info(size=SIZE, piece_size=PIECE, seed=0):
    data = random.Random(seed).randbytes(size)
    hashes = tuple(hashlib.sha1(data[i:i + piece_size]).digest() for i in range(0, size, piece_size))
    return data, FileInfo(size, piece_size, hashes)


def bits(*idx):
    return sum(1 << i for i in set(idx))


def piece(data, info, i):
    off = info.piece_offset(i)
    return data[off:off + info.piece_len(i)]


def corrupt(b):
    return bytes([b[0] ^ 0xFF]) + b[1:]


@pytest.fixture
def opened(tmp_path):
    """open_storage(content or None) -> (Storage, path); every Storage is closed after the test."""
    made = []

    def open_storage(content, info, name="data.bin"):
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        st = Storage(str(path), info)
        st.open()
        made.append(st)
        return st, path

    yield open_storage
    for st in made:
        st.close()


def scan_all(st):
    batches = []
    st.scan(lambda first, count, good: batches.append((first, count, good)))
    good = 0
    for _, _, g in batches:
        good |= g
    return good, batches


# -- sizing the file ------------------------------------------------------------------------------

def test_missing_file_is_created_with_exactly_size_bytes(opened):
    data, info = make_info()
    st, path = opened(None, info)
    assert path.stat().st_size == SIZE
    assert path.read_bytes() == bytes(SIZE)
    good, _ = scan_all(st)
    assert good == 0


def test_empty_file_is_extended(opened):
    _, info = make_info()
    st, path = opened(b"", info)
    assert path.stat().st_size == SIZE


def test_oversize_file_is_truncated_and_keeps_its_pieces(opened):
    data, info = make_info()
    st, path = opened(data + b"garbage" * 100, info)
    assert path.stat().st_size == SIZE
    assert path.read_bytes() == data
    good, _ = scan_all(st)
    assert good == bits(*range(info.n_pieces))


def test_undersize_file_is_extended_and_keeps_its_pieces(opened):
    data, info = make_info()
    st, path = opened(data[:2 * PIECE + 50], info)  # pieces 0, 1 whole, piece 2 cut short
    assert path.stat().st_size == SIZE
    assert path.read_bytes()[:2 * PIECE + 50] == data[:2 * PIECE + 50]
    good, _ = scan_all(st)
    assert good == bits(0, 1)


def test_zero_size_file(opened):
    _, info = make_info(size=0)
    st, path = opened(b"stale bytes", info)
    assert path.stat().st_size == 0
    good, batches = scan_all(st)
    assert good == 0 and batches == []


# -- scan -----------------------------------------------------------------------------------------

def test_partly_correct_file_scan_reports_exactly_the_good_pieces(opened):
    data, info = make_info()
    content = bytearray(data)
    for i in (1, 2, 5):  # corrupt one byte in the middle of these pieces
        content[info.piece_offset(i) + 7] ^= 0x55
    content[SIZE - 1] ^= 0x01  # and the last (short) piece's last byte
    st, _ = opened(bytes(content), info)
    good, _ = scan_all(st)
    assert good == bits(0, 3, 4, 6)


def test_short_last_piece_alone_is_recognised(opened):
    data, info = make_info()
    last = info.n_pieces - 1
    assert info.piece_len(last) < PIECE
    content = bytes(info.piece_offset(last)) + piece(data, info, last)
    st, _ = opened(content, info)
    good, _ = scan_all(st)
    assert good == bits(last)


@pytest.mark.parametrize("busy", [False, True, "flips"])
@pytest.mark.parametrize("chunk", [PIECE, 2 * PIECE])
def test_scan_batches_cover_every_piece_once(opened, monkeypatch, chunk, busy):
    """Batches of 3 pieces, read into chunk buffers of 1 or 2 pieces; the buffers are kept. On a
    busy machine the batches are checked at once instead of in the pool, still in order."""
    answers = iter([False, True] * 8) if busy == "flips" else None
    monkeypatch.setattr(Storage, "_machine_busy", lambda self: next(answers) if answers else busy)
    monkeypatch.setattr(storage, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(storage, "SCAN_BATCH_BYTES", 3 * chunk)
    data, info = make_info()
    content = bytearray(data)
    content[info.piece_offset(4)] ^= 1
    st, _ = opened(bytes(content), info)
    good, batches = scan_all(st)
    per = 3 * chunk // PIECE
    assert [(f, c) for f, c, _ in batches] == [(f, min(per, 8 - f)) for f in range(0, 8, per)]
    for first, count, g in batches:
        assert g & ~(((1 << count) - 1) << first) == 0  # a batch only reports its own pieces
    assert good == bits(0, 1, 2, 3, 5, 6, 7)
    assert 0 < len(st._spare) <= storage.SCAN_THREADS * 3  # receiving reuses them


def test_good_pieces_directly():
    data, info = make_info()
    assert good_pieces(info, 0, data) == bits(*range(8))
    assert good_pieces(info, 2, data[2 * PIECE:4 * PIECE]) == bits(2, 3)
    assert good_pieces(info, 2, data[3 * PIECE:5 * PIECE]) == 0  # right bytes, wrong place
    assert good_pieces(info, 7, piece(data, info, 7)) == bits(7)
    assert good_pieces(info, 0, data, skip=bits(1, 7)) == bits(0, 2, 3, 4, 5, 6)
    assert good_pieces(info, 0, data[:PIECE + 5]) == bits(0)  # truncated second piece


# -- write ----------------------------------------------------------------------------------------

def test_write_stores_only_the_good_pieces(opened):
    data, info = make_info()
    st, path = opened(None, info)
    chunk = piece(data, info, 1) + corrupt(piece(data, info, 2)) + piece(data, info, 3)
    assert st.write_async(1, chunk).get() == bits(1, 3)
    on_disk = path.read_bytes()
    assert on_disk[PIECE:2 * PIECE] == piece(data, info, 1)
    assert on_disk[2 * PIECE:3 * PIECE] == bytes(PIECE)  # the bad piece's region is unchanged
    assert on_disk[3 * PIECE:4 * PIECE] == piece(data, info, 3)
    assert on_disk[:PIECE] == bytes(PIECE) and on_disk[4 * PIECE:] == bytes(SIZE - 4 * PIECE)
    good, _ = scan_all(st)
    assert good == bits(1, 3)


def test_write_of_all_bad_data_changes_nothing(opened):
    data, info = make_info()
    before = b"\x5a" * SIZE
    st, path = opened(before, info)
    assert st.write_async(0, bytes(SIZE)).get() == 0
    assert path.read_bytes() == before


def test_write_short_last_piece(opened):
    data, info = make_info()
    st, path = opened(None, info)
    last = info.n_pieces - 1
    assert st.write_async(last, piece(data, info, last)).get() == bits(last)
    assert path.read_bytes()[info.piece_offset(last):] == piece(data, info, last)
    assert path.stat().st_size == SIZE


def test_write_accepts_a_memoryview(opened):
    data, info = make_info()
    st, path = opened(None, info)
    assert st.write_async(0, memoryview(data)[:2 * PIECE]).get() == bits(0, 1)
    assert path.read_bytes()[:2 * PIECE] == data[:2 * PIECE]


def test_skip_pieces_are_not_rewritten(opened):
    data, info = make_info()
    marker = b"\xee" * PIECE
    content = bytearray(SIZE)
    content[PIECE:2 * PIECE] = marker  # what we "already hold" for piece 1 (say, written meanwhile)
    st, path = opened(bytes(content), info)
    assert st.write_async(0, data[:4 * PIECE], skip=bits(1)).get() == bits(0, 2, 3)
    on_disk = path.read_bytes()
    assert on_disk[PIECE:2 * PIECE] == marker
    assert on_disk[:PIECE] == data[:PIECE]
    assert on_disk[2 * PIECE:4 * PIECE] == data[2 * PIECE:4 * PIECE]


def test_whole_file_by_writes_then_reopen_scans_complete(opened, tmp_path):
    data, info = make_info(seed=3)
    st, path = opened(b"junk" * 999, info)
    order = list(range(info.n_pieces))
    random.Random(1).shuffle(order)
    for i in order:
        assert st.write_async(i, piece(data, info, i)).get() == bits(i)
    st.close()
    assert path.read_bytes() == data
    st2, _ = opened(None, info)
    good, _ = scan_all(st2)
    assert good == bits(*range(info.n_pieces))


# -- in place, close ------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [None, b"", b"x" * 10, b"y" * (SIZE + 4096)], ids=lambda c: (
    "missing" if c is None else f"{len(c)}B"))
def test_file_is_never_replaced(tmp_path, content):
    data, info = make_info()
    path = tmp_path / "data.bin"
    if content is not None:
        path.write_bytes(content)
    st = Storage(str(path), info)
    st.open()
    ino = os.stat(path).st_ino
    st.write_async(0, data).get()
    st.sync()
    assert os.stat(path).st_ino == ino
    st.close()
    assert os.stat(path).st_ino == ino
    assert path.read_bytes() == data


def test_hard_link_sees_the_writes(tmp_path):
    """A bind-mounted file is changed through its own inode: another name for it sees every write."""
    data, info = make_info()
    path, alias = tmp_path / "data.bin", tmp_path / "alias.bin"
    path.write_bytes(b"old")
    os.link(path, alias)
    st = Storage(str(path), info)
    st.open()
    st.write_async(0, data).get()
    st.close()
    assert alias.read_bytes() == data


def test_close_twice_is_safe(tmp_path):
    _, info = make_info()
    st = Storage(str(tmp_path / "data.bin"), info)
    st.open()
    st.close()
    assert st.fd is None
    st.close()
    assert st.fd is None


def test_close_releases_the_descriptor(tmp_path):
    _, info = make_info()
    st = Storage(str(tmp_path / "data.bin"), info)
    st.open()
    fd = st.fd
    st.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_sendfile_sends_the_pieces_bytes(opened):
    data, info = make_info()
    st, _ = opened(data, info)
    a, b = socket.socketpair()
    try:
        st.sendfile(a, *info.span(2, 3), lambda: None)
        st.sendfile(a, *info.span(7, 1), lambda: None)
        want = data[2 * PIECE:5 * PIECE] + piece(data, info, 7)
        got = b""
        while len(got) < len(want):
            got += b.recv(65536)
        assert got == want
    finally:
        a.close()
        b.close()


def test_zero_pieces_past_the_old_end_count_without_reading(tmp_path, monkeypatch):
    """An empty or missing file is not read back after ftruncate, and is published in one step
    however many batches it spans; pieces whose expected content is all zeros still count as held
    (they are correct), others are missing."""
    monkeypatch.setattr(storage, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(storage, "SCAN_BATCH_BYTES", 4096)
    data = bytes(4096) + os.urandom(4096) + bytes(1000)
    info = FileInfo(len(data), 4096, tuple(hashlib.sha1(data[i:i + 4096]).digest()
                                           for i in range(0, len(data), 4096)))
    path = tmp_path / "data.bin"
    st = Storage(str(path), info)
    st.open()
    try:
        got = []
        st.scan(lambda first, count, good: got.append(good))
        assert got == [bits(0, 2)]  # pieces 0 and 2 are zeros and match; piece 1 does not
        assert path.stat().st_size == len(data)
    finally:
        st.close()


def test_written_pieces_past_the_old_end_are_read_back_by_a_later_scan(tmp_path):
    """The zero shortcut holds only for pieces never written: a piece written after open is
    verified from disk, so a scan reports it held."""
    data = os.urandom(3 * 4096)
    info = FileInfo(len(data), 4096, tuple(hashlib.sha1(data[i:i + 4096]).digest()
                                           for i in range(0, len(data), 4096)))
    st = Storage(str(tmp_path / "data.bin"), info)
    st.open()
    try:
        assert st.write_async(1, data[4096:8192]).get() == bits(1)
        got = []
        st.scan(lambda first, count, good: got.append(good))
        assert got == [bits(1)]
    finally:
        st.close()


@pytest.mark.parametrize("busy", [False, True])
def test_write_async_gives_the_same_result_in_the_pool_or_at_once(opened, monkeypatch, busy):
    monkeypatch.setattr(storage, "machine_busy", lambda own_threads=1: busy)
    data, info = make_info()
    st, _ = opened(bytes(SIZE), info)
    chunk = bytearray(data[:4 * PIECE])
    chunk[2 * PIECE] ^= 1
    assert st.write_async(0, chunk).get() == bits(0, 1, 3)
    os.close(st.fd)  # a failing pwrite reaches whoever waits on the result
    with pytest.raises(OSError):
        st.write_async(4, data[4 * PIECE:6 * PIECE]).get()
    st.fd = None


def test_machine_busy_reads_the_runnable_count(monkeypatch, tmp_path):
    import builtins
    real_open = builtins.open

    def fake(running):
        def opener(path, *a, **k):
            if path == "/proc/loadavg":
                p = tmp_path / "loadavg"
                p.write_text(f"0.50 0.40 0.30 {running}/300 4242\n")
                return real_open(p, *a, **k)
            return real_open(path, *a, **k)
        return opener

    monkeypatch.setattr(builtins, "open", fake(2 * storage.CPUS + 2))
    assert storage.machine_busy(own_threads=1) is True
    assert storage.machine_busy(own_threads=3) is False  # our own pool threads do not count
    monkeypatch.setattr(builtins, "open", fake(storage.CPUS))
    assert storage.machine_busy() is False


# -- fsync ----------------------------------------------------------------------------------------

def test_small_writes_are_flushed_once_at_the_end_big_ones_as_they_go(opened, monkeypatch):
    """While fetching, a flush runs at most every FSYNC_INTERVAL_S and only after
    FSYNC_MIN_BYTES more were written: a small file gets one fsync, at completion (sync())."""
    import gevent
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(storage.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    monkeypatch.setattr(storage, "FSYNC_INTERVAL_S", 0.02)
    monkeypatch.setattr(storage, "FSYNC_MIN_BYTES", 3 * PIECE)
    data, info = make_info()
    st, _ = opened(None, info)
    st.write_async(0, piece(data, info, 0) + piece(data, info, 1)).get()  # 2 pieces: under the threshold
    gevent.sleep(0.1)
    assert fsyncs == []
    st.write_async(2, piece(data, info, 2) + piece(data, info, 3)).get()  # 4 pieces since the last flush
    gevent.sleep(0.1)
    assert len(fsyncs) == 1
    st.write_async(4, piece(data, info, 4)).get()
    gevent.sleep(0.1)
    assert len(fsyncs) == 1  # 1 piece since: waits
    st.sync()  # completion
    assert len(fsyncs) == 2
    st.sync()
    assert len(fsyncs) == 2  # nothing new to flush


def test_big_files_start_their_writeback_as_pieces_are_written(opened, monkeypatch):
    """Pieces of a file of FSYNC_MIN_BYTES or more are handed to the disk at once (write-behind),
    so the fsync at completion has little left; a small file is left to that one fsync."""
    calls = []
    monkeypatch.setattr(storage, "write_behind", lambda fd, off, n: calls.append((off, n)))
    monkeypatch.setattr(storage, "FSYNC_MIN_BYTES", 2 * PIECE)
    data, info = make_info()  # 1000 bytes: "big" for this test
    st, _ = opened(None, info)
    st.write_async(1, piece(data, info, 1) + corrupt(piece(data, info, 2)) + piece(data, info, 3)).get()
    assert calls == [(PIECE, PIECE), (3 * PIECE, PIECE)]  # the good runs only
    monkeypatch.setattr(storage, "FSYNC_MIN_BYTES", SIZE + 1)
    small, _ = opened(None, info, name="small.bin")
    small.write_async(4, piece(data, info, 4)).get()
    assert len(calls) == 2


def test_write_behind_works_on_this_system(tmp_path):
    wb = storage._WriteBehind()
    with open(tmp_path / "f.bin", "wb") as f:
        f.write(b"x" * 8192)
        f.flush()
        wb(f.fileno(), 0, 8192)  # Linux: queues the writeback; elsewhere: nothing
    if os.uname().sysname == "Linux":
        assert wb._fn is not None
