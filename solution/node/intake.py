"""What arrives on a link: frames, read through a small read-ahead buffer, and the pieces of
PIECES frames, received in chunks of whole pieces, hashed and written (storage), accounted for.

Rule: pieces are accounted for in the order they arrived, and only here. A chunk goes to the
storage as soon as it is in (the thread pool, or at once on a busy machine) and the reader goes on
receiving; the verifier greenlet takes pool results in order. So pieces are announced chunk by
chunk, before the rest of their frame has arrived, and while the pool hashed them they stayed
"mine" (the endgame cannot ask the same peer for them again). Chunk buffers come from the storage,
which reuses them and bounds how many a node has in flight: memory stays bounded, and a reader
that is closing never waits for one. Conn mixes this in (the fields are its own).
"""

import time

import gevent
from gevent.queue import Queue

from . import log, picker, wire

MAX_BAD_PIECES = 3  # pieces failing their hash before we stop talking to a peer
READ_AHEAD = 4096  # read-ahead buffer per link; small, as fresh memory is dear (a 64 KiB buffer
#                   per link cost 60 nodes 10% of their CPU in S3)


class Closed(Exception):
    """We decided to end this connection; the message says why."""


class Intake:
    def _init_intake(self):
        self._rbuf = bytearray(READ_AHEAD)  # grows to the largest control frame seen
        self._rpos = self._rend = 0  # unread bytes of _rbuf
        self._verify_q = Queue()  # received chunks, in order; bounded by storage.take_buffer
        self._buffers_out = 0  # chunk buffers taken from the storage and not yet given back
        self._verifying = 0  # chunks in _verify_q or being finished by the verifier
        self.arrived = set()  # firsts of our requests whose data arrives or awaits the verifier

    # -- reading frames -----------------------------------------------------------------------
    def _recv(self, n):
        """Exactly n bytes, as a view of the read-ahead buffer (valid until the next call). One
        recv call brings in as many small frames as have arrived (a peer's HAVEs and REQUESTs
        come several per send), instead of two calls per frame."""
        if self._rend - self._rpos < n:
            self._fill(n)
        start = self._rpos
        self._rpos = start + n
        return memoryview(self._rbuf)[start:start + n]

    def _fill(self, n):
        buf, pos, end = self._rbuf, self._rpos, self._rend
        have = end - pos
        if len(buf) < n:  # a frame bigger than the buffer (bitfield, meta): a bigger one
            buf = bytearray(max(n, 2 * len(buf)))
            buf[:have] = self._rbuf[pos:end]
            self._rbuf = buf
        elif pos:
            buf[:have] = buf[pos:end]  # same length: allowed while old views exist
        view = memoryview(buf)[:max(n, READ_AHEAD)]  # no more: piece data goes to chunk buffers
        self._rpos, self._rend = 0, self._recv_until(view, have, n)

    def _recv_into(self, buf, n):
        """Exactly n bytes into buf (what the read-ahead holds first, then straight from the
        socket); returns a view of them."""
        view = memoryview(buf)[:n]
        got = min(n, self._rend - self._rpos)
        if got:
            view[:got] = self._rbuf[self._rpos:self._rpos + got]
            self._rpos += got
        self._recv_until(view, got, n)
        return view

    def _recv_until(self, view, got, n):
        """Receive into view, from byte `got` on, until at least n bytes are in; returns how many."""
        while got < n:
            k = self.sock.recv_into(view[got:])
            if not k:
                raise EOFError("peer closed the connection")
            got += k
        return got

    # -- receiving pieces ---------------------------------------------------------------------
    def _on_pieces(self, n):
        info = self.state.info
        first, count = wire.RANGE.unpack(self._recv(wire.RANGE.size))
        if self.mine.get(first, (None,))[0] != count or first in self.arrived:
            raise wire.WireError(f"pieces {first}+{count} were not requested")
        nbytes = n - wire.RANGE.size
        if nbytes != info.span(first, count)[1]:
            raise wire.WireError(f"pieces {first}+{count} carry {nbytes} bytes")
        self.arrived.add(first)
        storage, end, at = self.node.storage, first + count, first
        while at < end:
            k = min(storage.chunk_pieces, end - at)
            if self.reason is not None:  # closing (the verifier may be gone): never wait for slots
                raise Closed(self.reason)
            self._reader_waiting = True  # close() must interrupt this wait: recv would see EOF, it not
            try:
                buf = storage.take_buffer()  # waits while the node has enough chunks in flight
            finally:
                self._reader_waiting = False
            self._buffers_out += 1
            view = self._recv_into(buf, info.span(at, k)[1])
            job = storage.write_async(at, view, skip=self.state.have)
            chunk = (at, k, buf, view, job, first if at + k == end else None)
            if job.ready() and not self._verifying:
                self._chunk_done(*chunk)  # done already (a busy machine): account for it now
            else:
                if self._verifier is None:
                    self._verifier = gevent.spawn(self._verify_loop)
                self._verifying += 1
                self._verify_q.put(chunk)  # in order, after the chunks still in the pool
            at += k

    def _verify_loop(self):
        try:
            while True:
                self._chunk_done(*self._verify_q.get())
                self._verifying -= 1
        except Closed as e:
            self.close(str(e))

    def _chunk_done(self, first, count, buf, view, job, request_done):
        """A chunk was hashed (and its good pieces written): account for it, hand its buffer back."""
        try:
            good = job.get()
        except OSError as e:
            log.error("write_failed", path=self.node.config.data_path, why=str(e), result="closing")
            raise Closed(f"data file write failed: {e}") from None
        nbytes = len(view)
        view.release()
        self._buffers_out -= 1
        self.node.storage.give_buffer(buf)
        # Only now are these pieces done: while the pool hashed, they stayed "mine", so the
        # endgame could not ask this same peer for them again.
        if request_done is not None:
            del self.mine[request_done]
            self.arrived.discard(request_done)
        span = picker.span_bits(first, count)
        self.mine_bits &= ~span
        self._account(first, count, span, good, nbytes)
        self.kick()

    def _account(self, first, count, span, good, nbytes):
        s = self.state
        s.count("bytes_in", nbytes)
        new = good & ~s.have
        s.count("pieces_in", new.bit_count())
        s.count("dup_pieces", (span & s.have).bit_count())
        bad = span & ~good & ~s.have
        s.mark_have(good)
        if bad:
            s.count("pieces_bad", bad.bit_count())
            self.has &= ~bad
            s.release(bad)
            self.strikes += bad.bit_count()
            log.warning("piece_bad", peer=self.name, first=first, count=count,
                        bad=bad.bit_count(), strikes=self.strikes, result="discarded")
            if self.strikes >= MAX_BAD_PIECES:
                self.node.ban(self)
                raise Closed(f"{self.strikes} pieces failed their hash")
        if new:
            self.last_useful = time.monotonic()
            self.productive = True
            self.node.sources.add(self.name)
