"""One peer link: moves bytes between its socket and its Session, on four greenlets.

- the reader (whoever calls run()): the handshake, then recv -> session -> act on each event;
- the writer: frames (announcements, requests, replies). Both peers request from each other on
  one full-duplex link; if one greenlet both read and sent large replies, two peers sending at
  once with full socket buffers would each wait for the other to read, forever;
- the server: the peer's requests, in order, each once the node grants it an upload slot
  (hub.py); it and the writer take turns on the socket, a whole frame each;
- the verifier: piece chunks hashed in the storage's pool are accounted for here, in order.

Rule: what a peer may send, and the link's bookkeeping, are the session's; what the node does
about it goes through the hub; this module only moves bytes and runs the greenlets. The reader
never waits for the writer: what a peer may queue with us is bounded by the session.
close() works from any greenlet: it records the Reason, shuts the socket down (recv and send
return at once) and sets `ending` (a wait for a chunk buffer returns); the reader cleans up.
"""

import fcntl
import socket
import struct
import time

import gevent
from gevent.event import Event
from gevent.queue import Queue

from . import log, wire
from .budget import FRAME_COST, PEX_ADDR_COST, STATUS_COST, Budget
from .config import FileInfo
from .greenlets import Semaphore
from .hub import PIPELINE_REQUESTS
from .picker import span_bits
from .session import NEED_BUFFER, NEED_DATA, Chunk, Closed, Reason, Session

HANDSHAKE_TIMEOUT_S = 5.0  # a peer that connects and says nothing frees its slot this fast
USELESS_CLOSE_S = 3.0  # a link with nothing to exchange this long is closed (sockets are scarce)
IDLE_TIMEOUT_S = 20.0  # no frame at all from the peer this long, nothing pending: it is gone
MAX_BAD_PIECES = 3  # pieces failing their hash before we stop talking to a peer
SEND_STALL_S = 10.0  # a peer whose socket takes none of what we send for this long is gone
CLEANUP_WAIT_S = 1.0  # the writer, server and verifier get this long to end with the link
FAIR_FRAMES = 256  # a reader whose peer always has frames ready yields after this many in a row
RCVLOWAT_MAX = 128 << 10  # piece data wakes the reader per this many bytes at most...
RCVLOWAT_WAIT_S = 3.0  # ...or per this long of the link's measured rate, if less (stall checks look past it)
RCVLOWAT_BELOW_RATE = 8 << 20  # ...on a link measured slower than this (bytes/s); a LAN wakes as before
RCVLOWAT_READS_BELOW = 4 << 10  # ...whose reads of piece data average under this: a packet or two a wake-up
REJECTED_WAIT_S = 1.0  # after a REJECT we ask that peer for nothing this long: it is busy

SLOW_UPLINK = 8 << 20  # a link taking our replies slower than this (bytes/s) is slow: it needs an
UNSENT_BYTES = 128 << 10  # upload slot, and its socket holds this much unsent at most (so a slot lasts
# as long as the wire takes); until measured, a link is as the node's last measured one (hub.py)
TCP_INFO_LEN, TCP_INFO_BYTES_ACKED = 168, 120  # Linux's struct tcp_info: tcpi_bytes_acked (4.1+)
_KICK = object()  # in the writer's queue: announce, share peers, top up requests


def lowat_within(n, rcvbuf):
    """A low-water mark the receive buffer holds twice over: a larger one makes Linux clamp the
    advertised window to it (tcp_set_rcvlowat), and each wake-up would then cost a round trip."""
    return max(1, min(n, rcvbuf // 2))


class Conn:
    def __init__(self, hub, sock, ip, outbound, entry=None, offer=False, zero_copy=True):
        self.hub = hub
        self.sock = sock
        self.ip = ip
        self.outbound = outbound
        self.entry = entry  # PeerEntry of the peer's listening address, once known
        self.offer = offer  # dialled while we were complete: only to give
        self.zero_copy = zero_copy  # sendfile; False through TLS (the kernel would skip encryption)
        now = time.monotonic()
        self.session = Session(hub.hello(), hub.info, hub.chunk_pieces, now)
        self.reason = None  # a Reason, once the link is ending
        self.detail = ""  # for the log only
        self.ending = Event()
        self.productive = False  # a piece moved either way: the peer works
        self.last_useful = now
        self.sent_at = None  # while the writer is in a send: when the socket last took some of it
        self._acked = None  # (bytes the peer had acknowledged, when, in a send) at the last check()
        self._slow = None  # measured taking our replies slower than SLOW_UPLINK; None: not yet
        self._capped = False  # the socket's unsent bytes are capped at UNSENT_BYTES
        self._chunk_at = 0.0  # when the chunk buffer being filled was handed to the session
        self.budget = Budget(now)  # what this peer may cost us
        self._drained = Event()  # the writer set it: replies fell below half the budget
        self._work = 0  # bytes of work the peer's frames cost us since the last charge...
        self._bitset_ops = 0  # ...and operations on whole bitsets (priced once the file is known)
        self._frames_charged = 0  # session.frames_in at the last charge
        self._throttled = set()  # why we slowed this peer ("replies", "work"): logged once each
        self._loop = gevent.get_hub().loop
        self._turn = None  # the loop's time when the reader last saw it: unchanged = we never waited
        self._frames_at = 0  # session.frames_in when the reader last waited or yielded
        self._queue = Queue()  # the writer's: frames, _KICK
        self._serves = Queue()  # the server's: (first, count, arrived, counted in the hub's queue)
        self._socket_turn = Semaphore()  # the writer and the server send whole frames in turn
        self._ask_after = 0.0  # we request nothing from the peer before this (it rejected us)
        self._kicked = False
        self._verify_q = Queue()  # (chunk, pool job) in arrival order; bounded by chunk buffers
        self._verifying = 0
        self._buffers_out = 0  # chunk buffers taken from the hub, not given back yet
        self._writer = self._server = self._verifier = None
        # SO_RCVLOWAT on plain TCP only: through TLS, raw bytes and plaintext differ in count
        self._lowat = 1 if zero_copy else None
        self._lowat_asked = 1  # the mark last asked of _set_lowat, before the buffer's cap
        self._held = 0  # bytes the kernel held for us under the mark at the last stall check
        self._read_avg = float(RCVLOWAT_MAX)  # bytes per recv of piece data while SO_RCVLOWAT is 1

    @property
    def name(self):
        return self.entry.addr[0] if self.entry else self.ip

    def attach(self, entry):
        """The peer's listening address, known once its HELLO named its port."""
        self.entry = entry

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self):
        """The link's life, on the calling greenlet. Never raises for a peer's doing."""
        try:
            self._handshake()
            refused = self.hub.admit(self)
            if refused is not None:
                raise Closed(refused)
            self._writer = gevent.spawn(self._write_loop)
            self.kick()
            s = self.session
            while True:
                ev = s.next_event()
                if ev is NEED_DATA:
                    self._recv()
                elif ev is NEED_BUFFER:
                    self._give_buffer()
                else:
                    self._on_event(ev)
        except wire.WireError as e:
            self.close(Reason.PROTOCOL, str(e))
        except Closed as e:
            self.close(e.reason, e.detail)
        except (OSError, EOFError) as e:
            self.close(Reason.LOST, f"{type(e).__name__}: {e}")
        finally:
            self._cleanup()

    def close(self, reason, detail=""):
        """End the link, from any greenlet; the first reason given is the one that counts."""
        if self.reason is None:
            self.reason, self.detail = reason, detail
        self.ending.set()
        try:
            self.sock.shutdown(2)
        except OSError:
            pass

    def _cleanup(self):
        if self.reason is None:  # killed (at shutdown)
            self.reason = Reason.SHUTDOWN
        self.ending.set()
        # Wait for them to end: a writer still running could claim pieces after the release below,
        # and those would stay requested forever.
        for g in (self._writer, self._server, self._verifier):
            if g is not None:
                g.kill(block=True, timeout=CLEANUP_WAIT_S)
        while not self._serves.empty():  # never served: the node's queue count gives them back
            if self._serves.get_nowait()[3]:
                self.hub.dequeued()
        self.sock.close()
        for _ in range(self._buffers_out):  # in the session or the pool: not reused
            self.hub.give_buffer(None)
        self._buffers_out = 0
        self.hub.release(self.session.close())
        self.hub.leave(self)

    # -- reading ------------------------------------------------------------------------------
    def _handshake(self):
        self.sock.sendall(self.session.greeting)
        with gevent.Timeout(HANDSHAKE_TIMEOUT_S, Closed(Reason.HANDSHAKE_TIMEOUT)):
            while self.session.next_event() is NEED_DATA:  # it accepts nothing but HELLO first
                self._recv()

    def _recv(self):
        """Receive what the session asks for: piece data until its chunk buffer is full, else
        one recv of control frames. What the peer's frames so far cost us is charged first."""
        if self._work or self.session.frames_in != self._frames_charged:
            self._charge_work()
        s, more = self.session, True
        while more:
            if self.reason is not None:  # closed from elsewhere: data may still sit in the socket
                raise Closed(self.reason, self.detail)
            view = s.recv_view()
            slow = (s.into_chunk and s.rate is not None and s.rate < RCVLOWAT_BELOW_RATE
                    and self._read_avg < RCVLOWAT_READS_BELOW)
            if self._lowat is not None and (slow or self._lowat != 1):
                self._set_lowat(min(len(view), int(s.rate * RCVLOWAT_WAIT_S)) if slow else 1)
            n = self.sock.recv_into(view)
            if not n:
                raise EOFError("peer closed the connection")
            if s.into_chunk and self._lowat == 1:
                self._read_avg += (n - self._read_avg) / 4
            more = s.received(n, time.monotonic())
            self._share_time()

    def _give_buffer(self):
        buf = self.hub.take_buffer(self.ending)  # waits while the node has enough in flight
        if buf is None:
            raise Closed(self.reason, self.detail)
        self._buffers_out += 1
        self._chunk_at = time.monotonic()
        self.session.give_buffer(buf)

    def _share_time(self):
        """Yield after FAIR_FRAMES frames read without waiting, so a flooding peer cannot starve
        the rest; counted in frames, not time, so a fast link's few large frames rarely yield."""
        turn, frames = self._loop.now(), self.session.frames_in
        if turn != self._turn:  # the loop ran since we last looked: we waited
            self._turn, self._frames_at = turn, frames
        elif frames - self._frames_at >= FAIR_FRAMES:
            gevent.sleep(0)
            self._turn, self._frames_at = self._loop.now(), frames

    def _set_lowat(self, n):
        """On a slow link, wake the reader only once n bytes of piece data are in (never more than
        the peer is sending): packets arrive one by one, and a wake-up each cost 10x the CPU."""
        n = min(n, RCVLOWAT_MAX)
        if n == self._lowat_asked:
            return  # as on the last read: no syscall per read
        self._lowat_asked = n
        try:
            if n > 1:  # the buffer only grows (autotuning): read again when the mark asked changes
                n = lowat_within(n, self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
            else:
                n = 1  # also for a link measured at under a byte a second
            if n != self._lowat:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
                self._lowat = n
        except (OSError, AttributeError):
            self._lowat = None  # not supported here: one wake-up per packet, as before

    def _charge_work(self):
        """Wait, reading nothing more from this peer, while the work its frames cost us (bytes of
        bitset work, as such operations span the whole file's bitset) is over its budget."""
        frames, self._frames_charged = self.session.frames_in - self._frames_charged, self.session.frames_in
        work = self._work + FRAME_COST * frames + self._bitset_ops * (self.session.full.bit_length() >> 3)
        self._work = self._bitset_ops = 0
        pause = self.budget.spend(work, time.monotonic())
        if pause:
            self._slowed("work")
            if self.ending.wait(pause):
                raise Closed(self.reason, self.detail)

    def _replied(self):
        """After queueing a reply: wait, reading nothing more, while the replies queued for this
        peer are over its budget."""
        b = self.budget
        while b.replies_full:
            self._slowed("replies")
            self._drained.clear()
            gevent.wait([self._drained, self.ending], count=1)
            if self.reason is not None:
                raise Closed(self.reason, self.detail)

    def _slowed(self, why):
        if why not in self._throttled:
            self._throttled.add(why)
            log.warning("peer_throttled", peer=self.name, why=why, result="reading_slower")

    def _on_event(self, ev):
        t, hub, s = type(ev), self.hub, self.session
        if t is Chunk:
            self._on_chunk(ev)
        elif t is wire.Have:  # something new to request from it, or both complete now: else no wake-up
            self._bitset_ops += 1
            if hub.news(s, span_bits(ev.first, ev.count)):
                self.kick()
        elif t is wire.Request:
            self._bitset_ops += 1
            slow = self._is_slow()
            if hub.can_serve(ev.first, ev.count) and (not slow or hub.queue_serve()):
                self.budget.queued(0)
                self._serves.put((ev.first, ev.count, time.monotonic(), slow))
                if self._server is None:
                    self._server = gevent.spawn(self._serve_loop)
            else:  # we lack a piece, or too many requests wait for our upload already
                self.send(s.reject(ev.first, ev.count))
            self._replied()
        elif t is wire.Bitfield:
            self._work += 2 * len(ev.bits)
            self.kick()
        elif t is wire.Reject:
            self._bitset_ops += 1
            self._ask_after = time.monotonic() + REJECTED_WAIT_S
            hub.release(span_bits(ev.first, ev.count))  # the other links may ask for them now
        elif t is wire.Peers:
            self._work += PEX_ADDR_COST * len(ev.addrs)
            take = self.budget.pex_allowed(len(ev.addrs), time.monotonic())
            if take < len(ev.addrs):
                self._slowed("peer exchange")
            hub.learn_peers(ev.addrs[:take])
        elif t is wire.GetMeta:
            frame = hub.meta_frame()
            if frame is not None:
                self.send(frame)
                self._replied()
        elif t is FileInfo:
            hub.learn_meta(ev, self.name)
        elif t is wire.StatusRequest:
            self._work += STATUS_COST
            self.send(hub.status_frame())
            self._replied()

    # -- pieces in ----------------------------------------------------------------------------
    def _on_chunk(self, chunk):
        """Hash and write in the pool while the reader goes on receiving; account in order."""
        if self.hub.uplink_slow and len(chunk.view) > SLOW_UPLINK * (time.monotonic() - self._chunk_at):
            self.hub.downlink_fast()
        job = self.hub.write(chunk.first, chunk.view)
        if job.ready() and not self._verifying:
            self._chunk_done(chunk, job)  # done already (a busy machine): account for it now
            return
        if self._verifier is None:
            self._verifier = gevent.spawn(self._verify_loop)
        self._verifying += 1
        self._verify_q.put((chunk, job))

    def _verify_loop(self):
        try:
            while True:
                self._chunk_done(*self._verify_q.get())
                self._verifying -= 1
        except Closed as e:
            self.close(e.reason, e.detail)

    def _chunk_done(self, chunk, job):
        try:
            good = job.get()
        except OSError as e:
            log.error("write_failed", path=self.hub.data_path, why=str(e), result="closing")
            raise Closed(Reason.WRITE_FAILED, str(e)) from None
        nbytes = len(chunk.view)
        chunk.view.release()
        self._buffers_out -= 1
        self.hub.give_buffer(chunk.buf)
        self.session.chunk_done(chunk)
        new, bad = self.hub.account(self.name, chunk.first, chunk.count, good, nbytes)
        if bad:
            strikes = self.session.bad_pieces(bad)
            log.warning("piece_bad", peer=self.name, first=chunk.first, count=chunk.count,
                        bad=bad.bit_count(), strikes=strikes, result="discarded")
            if strikes >= MAX_BAD_PIECES:
                self.hub.ban(self)
                raise Closed(Reason.BAD_PIECES, f"{strikes} pieces")
        if new:
            self.last_useful = time.monotonic()
            self.productive = True
        self.kick()

    # -- writing ------------------------------------------------------------------------------
    def send(self, frame):
        self.budget.queued(len(frame))
        self._queue.put(frame)

    def kick(self):
        """Something changed: let the writer announce, share peers and top up requests."""
        if not self._kicked:
            self._kicked = True
            self._queue.put(_KICK)

    def _write_loop(self):
        try:
            while True:
                job = self._queue.get()
                if job is _KICK:
                    self._kicked = False
                    self._send_updates()
                else:
                    self._send(self.sock.sendall, job)
                    self._sent(len(job))
        except Closed as e:
            self.close(e.reason, e.detail)
        except (OSError, EOFError) as e:
            self.close(Reason.LOST, f"send failed: {e}")

    def _serve_loop(self):
        """The peer's requests in order. On a slow link each waits for an upload slot of the
        node's; one that waited too long is rejected, so the peer asks someone less busy, and so
        is one the hub would rather not send twice yet (hub.spread_first)."""
        try:
            while True:
                first, count, arrived, queued = self._serves.get()
                slow = self._is_slow()
                try:
                    slot = slow and self.hub.upload_slot(arrived)
                finally:
                    if queued:  # waiting no more: served, rejected, or the link is gone
                        self.hub.dequeued()
                if not slow:
                    self._send(self._serve, first, count)
                elif not slot:
                    self.send(self.session.reject(first, count))
                else:
                    try:
                        if self.hub.spread_first(first, count, time.monotonic() - arrived):
                            self.send(self.session.reject(first, count))
                        else:
                            self._send(self._serve, first, count)
                    finally:
                        self.hub.upload_done()
                self._sent(0)
        except (OSError, EOFError) as e:
            self.close(Reason.LOST, f"send failed: {e}")

    def _send(self, fn, *args):
        """fn(*args) sends one whole frame, its turn on the socket; a stall of it is noticed."""
        with self._socket_turn:
            self.sent_at = time.monotonic()
            try:
                fn(*args)
            finally:
                self.sent_at = None
        if self._socket_turn.linkcount():  # the semaphore lets its releaser take it back first
            gevent.sleep(0)

    def _sent(self, nbytes):
        self.budget.sent(nbytes)
        if self.budget.replies_low:
            self._drained.set()

    def _serve(self, first, count):
        self.session.answered()
        start = time.monotonic()
        nbytes = self.hub.sendfile(self.sock, first, count, self._progress, self.zero_copy)
        self.last_useful = now = time.monotonic()
        self.productive = True
        if nbytes > 2 * UNSENT_BYTES and self._capped:  # unsent capped: the time is the wire's
            self._set_slow(nbytes < SLOW_UPLINK * (now - start))

    def _is_slow(self):
        slow = self.hub.uplink_slow if self._slow is None else self._slow
        if slow != self._capped:
            try:  # 0: back to the system's default (no cap)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, UNSENT_BYTES if slow else 0)
                self._capped = slow
            except (OSError, AttributeError):
                pass
        return slow

    def _set_slow(self, slow):
        self._slow = slow
        self.hub.uplink_measured(slow)
        self._is_slow()

    def _progress(self, wait=0.0):
        """A long reply to a slow reader (a capped uplink shared by many links) is no stall, nor
        is `wait` seconds of our own upload limit ahead."""
        self.sent_at = time.monotonic() + wait

    def _send_updates(self):
        """What we hold, whom we know, and requests to keep PIPELINE_REQUESTS out: one send."""
        if self.reason is not None:
            return  # ending: request nothing more
        s, hub = self.session, self.hub
        if s.info is None and hub.info is not None:
            s.set_info(hub.info, hub.chunk_pieces)
        out = s.ask_meta() if s.info is None else s.announce(hub.have, hub.complete)
        if s.peers_version != hub.peers_version:  # only what was verified since: O(new), not O(all)
            own = self.entry.addr if self.entry else None
            out += s.share_peers([a for a in hub.peer_addrs(s.peers_version) if a != own], hub.peers_version)
        done = s.info is not None and hub.both_complete(s)
        now = time.monotonic()
        if s.info is not None and not done and len(s.mine) < PIPELINE_REQUESTS and now >= self._ask_after:
            runs = hub.pick(s, PIPELINE_REQUESTS - len(s.mine))
            out += [s.request(first, count, now) for first, count in runs]
        if out:
            self._send(self.sock.sendall, b"".join(out))
        if done:
            raise Closed(Reason.BOTH_COMPLETE)

    # -- housekeeping (about once a second) ---------------------------------------------------
    def check(self, now):
        """Close the link if the peer stalls (on our requests, or by not reading what we send),
        falls silent, or has nothing left to exchange with us."""
        s = self.session
        if s.overdue(now) and not self._held_grew():
            log.warning("peer_stalled", peer=self.name, outstanding=len(s.mine), result="closing")
            self.close(Reason.REQUEST_TIMEOUT)
        elif self._send_stalled(now):
            log.warning("peer_stalled", peer=self.name, why="not reading", result="closing")
            self.close(Reason.NOT_READING)
        elif now - s.last_rx > IDLE_TIMEOUT_S and not s.mine and not s.serving:
            self.close(Reason.IDLE)
        elif self.hub.useful(s):
            self.last_useful = now
            if self._ask_after and now >= self._ask_after:  # rejected a while ago: ask again
                self._ask_after = 0.0
                self.kick()
        elif now - self.last_useful > USELESS_CLOSE_S:
            self.close(Reason.NOTHING_TO_EXCHANGE)

    def _held_grew(self):
        """Piece data the reader has not seen, held by the kernel under our low-water mark, grew
        since the last look: the peer is sending, however long ago the reader last woke."""
        held = 0
        if self._lowat is not None and self._lowat > 1:
            import termios  # here, not at start-up: a shared library to load, for a rare check
            try:
                held = struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
            except (OSError, ValueError):
                pass
        grew, self._held = held > self._held, held
        return grew

    def _send_stalled(self, now):
        """In a send, and neither the writer handed the socket more nor the peer acknowledged any
        for SEND_STALL_S (a big socket buffer wakes the writer only once a third of it drains: on a
        slow link that takes minutes, while the peer reads all along). Also where a link is found
        slow; a reply measured fast (the socket's unsent bytes capped, so honestly) ends that."""
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
            acked = struct.unpack_from("Q", info, TCP_INFO_BYTES_ACKED)[0]
        except (OSError, AttributeError, struct.error):
            acked = None  # not Linux, or the socket is gone: the writer's progress alone decides
        busy = self.sent_at is not None
        last, self._acked = self._acked, (acked, now, busy) if acked is not None else None
        if not busy:
            return False
        if acked is not None and last is not None:
            if acked > last[0]:
                self.sent_at = now
            if last[2] and self._slow is not True and acked - last[0] < SLOW_UPLINK * (now - last[1]):
                self._set_slow(True)  # sending all the last interval, and this little went out
        return now - self.sent_at > SEND_STALL_S
