"""The data file: open or create it, size it, verify what it holds, write verified pieces in place.

Rule: the file is only ever changed with ftruncate and pwrite on its own descriptor (it may be a bind
mount: never replace it by rename), and only pieces whose SHA-1 matched are written.
Hashing and disk writes run in the storage's own pool of two threads (hashlib and os.pwrite release
the GIL), so the event loop keeps moving bytes on the other core meanwhile; on a machine with more
busy threads than cores, pieces are verified (and written) at once instead (see write_async and
scan). fsync runs on a third thread, as it waits on the disk; big files start their disk writes as
they go (write-behind), so that the fsync at completion is short.
"""

import collections
import hashlib
import os
import queue
import threading
import time

import gevent
from gevent.event import AsyncResult
from gevent.socket import wait_write

from . import log
from .greenlets import Semaphore, until_tick
from .picker import runs, span_bits

SCAN_BATCH_BYTES = 1 << 20  # verify the existing file in 1 MiB steps, publishing pieces as they pass
SCAN_THREADS = 2  # batches checked at once: hashing runs on both cores
FSYNC_INTERVAL_S = 1.0  # while fetching, flush written pieces at most once a second...
FSYNC_MIN_BYTES = 32 << 20  # ...and only after this much more: a small file is flushed once, at the end
CHUNK_BYTES = 256 << 10  # received pieces are hashed and written in chunks of at least this...
CHUNK_BYTES_MAX = 4 << 20  # ...up to this (1/256 of the file): per-chunk costs dominate big files
COPY_BYTES = 256 << 10  # send_copy reads and sends this much at a time
LOAD_SAMPLE_S = 0.25  # how often write_async looks at how busy the machine is
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
CHUNKS_IN_FLIGHT = 8  # per node, received and not yet written: bounds memory (fresh pages are dear)


class _WriteBehind:
    """Starts the disk on pieces as soon as they are written (Linux sync_file_range with
    SYNC_FILE_RANGE_WRITE: queue the writeback, do not wait), so the fsync at completion finds
    little left. It claims no durability: fsync still does that. Where the call is missing it
    does nothing. Loaded on first use, so a node that only seeds never imports ctypes."""

    SYNC_FILE_RANGE_WRITE = 2

    def __init__(self):
        self._fn = None
        self._loaded = False

    def __call__(self, fd, offset, nbytes):
        if not self._loaded:
            self._fn, self._loaded = self._load(), True
        if self._fn is not None:
            self._fn(fd, offset, nbytes, self.SYNC_FILE_RANGE_WRITE)  # an error only loses the hint

    @staticmethod
    def _load():
        try:
            import ctypes
            fn = ctypes.CDLL(None).sync_file_range  # libc's, without spawning ldconfig
        except (ImportError, OSError, AttributeError):
            return None
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        return fn


write_behind = _WriteBehind()


def good_pieces(info, first, data, skip=0):
    """Bitset of pieces in `data` (pieces first.. concatenated) whose SHA-1 matches."""
    good, off = 0, 0
    for i in range(first, first + _count(info, first, len(data))):
        n = info.piece_len(i)
        if not (skip >> i) & 1 and hashlib.sha1(data[off:off + n]).digest() == info.hashes[i]:
            good |= 1 << i
        off += n
    return good


def machine_busy(own_threads=1):
    """True when other processes keep more threads runnable than twice the cores (the 4th field
    of /proc/loadavg, machine-wide even in a container, less our own `own_threads`: our pool
    threads at work must not count, or a 2-node swarm would talk itself out of its pool);
    False where that cannot be read."""
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return False
    return running - own_threads > 2 * CPUS


class Workers:
    """A few OS threads for blocking file work; each job's result comes back on the event loop.
    gevent's ThreadPool does the same, but importing it costs a node 8 ms of start-up (pprint,
    dataclasses, inspect), an eighth of the whole. Threads start with the first job."""

    def __init__(self, size, name):
        self.size = size
        self._name = name
        self._jobs = queue.SimpleQueue()
        self._loop = gevent.get_hub().loop
        self._threads = []

    def spawn(self, fn, *args):
        """Run fn(*args) on a thread -> an AsyncResult (ready(), get()) set on the event loop."""
        if not self._threads:
            self._threads = [threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
                             for i in range(self.size)]
            for t in self._threads:
                t.start()
        result = AsyncResult()
        self._jobs.put((result, fn, args))
        return result

    def apply(self, fn, args):
        return self.spawn(fn, *args).get()

    def kill(self):
        """Let the threads end once the jobs queued before have run (daemons: exit never waits)."""
        for _ in self._threads:
            self._jobs.put(None)
        self._threads = []

    def _work(self):
        while (job := self._jobs.get()) is not None:
            result, fn, args = job
            try:
                value = fn(*args)
            except BaseException as e:  # noqa: BLE001 - raised again by get(), on the loop
                self._loop.run_callback_threadsafe(result.set_exception, e)
            else:
                self._loop.run_callback_threadsafe(result.set, value)


class _Done:
    """What _submit returns when it did the work itself: .get() gives the result, or raises
    what the work raised (a failed pwrite), as a pool job's .get() would."""

    def __init__(self, fn, *args):
        self.value = self.error = None
        try:
            self.value = fn(*args)
        except Exception as e:  # noqa: BLE001 - handed to whoever calls get()
            self.error = e

    def get(self):
        if self.error is not None:
            raise self.error
        return self.value

    @staticmethod
    def ready():
        return True


def zero_pieces(info, first, count):
    """Bitset of pieces first.. that are correct if they hold only zero bytes (a rare file, but
    a hole left by ftruncate must still count when its expected content is zeros)."""
    if count <= 0:
        return 0
    lengths = {info.piece_len(first), info.piece_len(first + count - 1)}  # only the last differs
    zero = {n: hashlib.sha1(bytes(n)).digest() for n in lengths}
    hashes = info.hashes[first:first + count]
    if not any(h in hashes for h in zero.values()):  # the usual case, found at C speed
        return 0
    good = 0
    for i in range(first, first + count):
        if info.hashes[i] == zero.get(info.piece_len(i)):
            good |= 1 << i
    return good


def _count(info, first, nbytes):
    last_end = first * info.piece_size + nbytes
    return -(-last_end // info.piece_size) - first


class Storage:
    def __init__(self, path, info):
        self.path = path
        self.info = info
        self.fd = None
        self.size_before = 0  # bytes the file held before we sized it; beyond that it is zeros...
        self.written = 0  # ...except for pieces we wrote since (bitset)
        # Worker threads share these: an OS lock (nothing is monkey-patched).
        self._lock = threading.Lock()  # bookkeeping of what was written
        self._dirty = 0  # bytes written since the last fsync
        self._syncer = None
        chunk = min(CHUNK_BYTES_MAX, max(CHUNK_BYTES, info.size // 256))
        self.chunk_pieces = max(1, chunk // info.piece_size)
        self._chunk_bytes = self.chunk_pieces * info.piece_size
        self._spare = []
        self._copy_spare = []  # send_copy's buffers, one per send in progress at most
        self._slots = Semaphore(CHUNKS_IN_FLIGHT)
        self._busy, self._busy_until = False, 0.0
        # Its own small pool: more threads only take turns, and pwrites to one file contend on its inode.
        self._pool = Workers(min(CPUS, 2), "storage")
        # fsync waits on the disk: on its own thread, it never holds a hashing thread.
        self._flusher = Workers(1, "fsync")
        # A small file is flushed once, at completion: writing behind would only add calls.
        self._write_behind = write_behind if info.size >= FSYNC_MIN_BYTES else None

    # -- receive buffers: few and reused, since fresh memory costs a page fault per 4 KiB ---------
    def take_buffer(self, cancel):
        """A buffer for one chunk (chunk_pieces whole pieces), or None once `cancel` (an Event) is
        set; waits while CHUNKS_IN_FLIGHT are out. Every buffer taken goes back via give_buffer."""
        while not self._slots.acquire(blocking=False):
            gevent.wait([self._slots, cancel], count=1)
            if cancel.is_set():
                return None
        return self._buffer()

    def _buffer(self):
        return self._spare.pop() if self._spare else bytearray(self._chunk_bytes)

    def give_buffer(self, buf):
        """Hand a buffer back; None if it is lost (its connection died while a thread used it).
        Spares are never dropped: there are at most CHUNKS_IN_FLIGHT plus the scan's."""
        if buf is not None:
            self._spare.append(buf)
        self._slots.release()

    def open(self):
        """Open (creating if missing) and size the file to exactly info.size bytes."""
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        before = self.size_before = os.fstat(self.fd).st_size
        if before != self.info.size:
            os.ftruncate(self.fd, self.info.size)
        log.info("storage_open", path=self.path, size=self.info.size, size_before=before,
                 result="resized" if before != self.info.size else "ok")
        self._syncer = gevent.spawn(self._sync_loop)

    def scan(self, on_batch):
        """Verify every piece already on disk, in batches, in order; on_batch(first, count, good).
        The batches are read into chunk buffers, which receiving reuses afterwards (fresh memory
        is dear); on a busy machine each batch is checked at once, as in write_async."""
        info = self.info
        chunks = max(1, SCAN_BATCH_BYTES // self._chunk_bytes)
        per_batch = chunks * self.chunk_pieces
        # Pieces from `tail` on lie wholly past the old end: ftruncate made them, zeros but for
        # pieces written since: nothing to read there.
        tail = min(info.n_pieces, -(-self.size_before // info.piece_size))
        pending = collections.deque()
        for first in range(0, tail, per_batch):
            if len(pending) == SCAN_THREADS:
                self._publish(pending.popleft(), on_batch)
            count = min(per_batch, tail - first)
            bufs = [self._buffer() for _ in range(-(-count // self.chunk_pieces))]
            job = self._submit(self._check_batch, first, count, bufs)
            pending.append((first, count, bufs, job))
            if isinstance(job, _Done):  # checked at once (a busy machine): publish it now,
                self._publish(pending.popleft(), on_batch)
                gevent.sleep(0)  # and let links move between batches
        while pending:
            self._publish(pending.popleft(), on_batch)
        if tail < info.n_pieces:
            count = info.n_pieces - tail
            on_batch(tail, count, zero_pieces(info, tail, count) | self.written & span_bits(tail, count))

    def _publish(self, batch, on_batch):
        first, count, bufs, job = batch
        good = job.get()
        self._spare.extend(bufs)
        on_batch(first, count, good)

    def _check_batch(self, first, count, bufs):
        info = self.info
        offset, length = info.span(first, count)
        good, end = 0, offset + length
        for buf in bufs:
            n = min(len(buf), end - offset)
            view = memoryview(buf)[:n]
            got = 0
            while got < n:
                k = os.preadv(self.fd, [view[got:]], offset + got)
                if k == 0:
                    raise OSError(f"{self.path}: shorter than {end} bytes while scanning")
                got += k
            good |= good_pieces(info, first, view)
            first += self.chunk_pieces
            offset += n
        return good

    def write_async(self, first, data, skip=0):
        """Verify pieces first.. in `data` and pwrite the good ones, in the thread pool; `.get()`
        on the result waits for the good bitset. Pieces in `skip` (already held) are neither hashed
        nor written. Several may run at once (both cores hash and fill the page cache); on a
        machine busier than its cores a pool thread finds no free core, so the work is done at
        once, here."""
        return self._submit(self._verify_and_write, first, data, skip)

    def _submit(self, fn, *args):
        """fn(*args) as a pool job, or done at once (a _Done) while the machine is busy."""
        if self._machine_busy():
            return _Done(fn, *args)
        return self._pool.spawn(fn, *args)

    def _machine_busy(self):
        now = time.monotonic()
        if now >= self._busy_until:
            self._busy_until = now + LOAD_SAMPLE_S
            self._busy = machine_busy(1 + self._pool.size)
        return self._busy

    def _verify_and_write(self, first, data, skip):
        good = good_pieces(self.info, first, data, skip)
        if good:
            base, written = self.info.piece_offset(first), 0
            for run_first, run_count in runs(good):
                start, n = self.info.span(run_first, run_count)
                os.pwrite(self.fd, data[start - base:start - base + n], start)
                if self._write_behind is not None:
                    self._write_behind(self.fd, start, n)
                written += n
            with self._lock:
                self._dirty += written
                self.written |= good
        return good

    def sendfile(self, sock, offset, n, progress):
        """Send n bytes of the file from offset straight from the page cache (zero-copy),
        calling progress() each time the socket took some (a stall is the caller's to judge)."""
        out = sock.fileno()
        while n:
            try:
                sent = os.sendfile(out, self.fd, offset, n)
            except BlockingIOError:
                wait_write(out)
                continue
            if sent == 0:
                raise EOFError("data file shorter than expected")
            progress()
            offset += sent
            n -= sent

    def send_copy(self, sock, offset, n, progress):
        """Send n bytes of the file from offset by reading them into a reused buffer (for sockets
        that cannot take sendfile, as TLS does its encryption in user space); progress() as above."""
        buf = self._copy_spare.pop() if self._copy_spare else bytearray(COPY_BYTES)
        try:
            view = memoryview(buf)
            while n:
                k = os.preadv(self.fd, [view[:min(n, COPY_BYTES)]], offset)
                if k == 0:
                    raise EOFError("data file shorter than expected")
                sock.sendall(view[:k])
                progress()
                offset += k
                n -= k
        finally:
            self._copy_spare.append(buf)

    def _sync_loop(self):
        while True:
            gevent.sleep(until_tick(FSYNC_INTERVAL_S))
            if self._dirty >= FSYNC_MIN_BYTES:
                self.sync()

    def sync(self):
        if self._dirty and self.fd is not None:
            with self._lock:
                self._dirty = 0  # before the fsync, which covers every pwrite counted so far
            self._flusher.apply(os.fsync, (self.fd,))

    def close(self):
        if self._syncer is not None:
            self._syncer.kill()
        self._pool.kill()
        self._flusher.kill()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            if self._dirty:
                os.fsync(fd)
            os.close(fd)
            log.info("storage_closed", path=self.path, result="ok")

