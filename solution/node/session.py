"""One peer link's protocol, sans-IO: bytes in -> events out, and the frames we send out.

Rule 1: what a peer may send, and when, is decided here and only here: RULES below is the whole
of it. A frame against it raises wire.WireError; the caller closes that one link.
Rule 2: every byte a peer sends goes through one receive path (recv_view -> received ->
next_event), the status client's and the fuzzers' bytes included. Piece data goes straight into
the chunk buffers the caller hands in (zero-copy); every other frame through a small read-ahead.
Rule 3: no sockets, no gevent, no clock of its own: times come in as arguments.

The link's own bookkeeping lives here too: what we asked the peer for (and by when), how many of
its requests we have not answered yet, what it holds, and what we told it we hold.

Reading, as h11 does it:

    while True:
        ev = session.next_event()
        if ev is NEED_DATA:     n = sock.recv_into(session.recv_view()); session.received(n, now)
        elif ev is NEED_BUFFER: session.give_buffer(a buffer of at least chunk_bytes)
        else:                   act on ev (a wire message, a FileInfo, or a Chunk of piece data)
"""

import enum
from collections import namedtuple

from . import wire
from .config import ConfigError, FileInfo, check_file_info
from .picker import runs, span_bits

READ_AHEAD = 4096  # bytes per recv for control frames; small, as fresh memory is dear
MAX_PEER_REQUESTS = 64  # unanswered requests a peer may have with us before we call it a flood
MAX_SERVE_BYTES = 64 << 20  # largest single REQUEST we serve (one max-size piece)
REQUEST_TIMEOUT_S = 4.0  # plus REQUEST_TIMEOUT_PER_MB_S per MiB, as Kraken scales piece deadlines
REQUEST_TIMEOUT_PER_MB_S = 4.0
REQUEST_STALL_S = 8.0  # a late request ends the link only if no piece data came for this long either
RATE_WINDOW_S = 1.0  # the link's piece-data rate is measured over windows this long
HAVE_RUNS_MAX = 64  # beyond this many HAVE frames, one BITFIELD is cheaper
NO_INFO_PIECES = 1 << 22  # range bound while the file is unknown (config.MAX_PIECES)
_HEADER, _RANGE = wire.HEADER.size, wire.RANGE.size

NEED_DATA = "NEED_DATA"  # recv into recv_view(), then call received()
NEED_BUFFER = "NEED_BUFFER"  # a PIECES payload is next: give_buffer() a chunk buffer

Chunk = namedtuple("Chunk", "first count buf view done")  # done: first of the request it ends


class Phase(enum.Enum):
    HANDSHAKE = "handshake"  # we sent HELLO; the peer's HELLO must come first
    OPEN = "open"
    CLOSED = "closed"


# What a peer may send: the phase a frame is legal in, and the condition it must also meet.
#  kind              phase        only if
RULES = {
    wire.HELLO:      (Phase.HANDSHAKE, None),
    wire.BITFIELD:   (Phase.OPEN, None),
    wire.HAVE:       (Phase.OPEN, "its range lies within the file"),
    wire.REQUEST:    (Phase.OPEN, "in range, and fewer than MAX_PEER_REQUESTS unanswered"),
    wire.PIECES:     (Phase.OPEN, "exactly a range we requested, not arrived yet"),
    wire.REJECT:     (Phase.OPEN, None),
    wire.GET_META:   (Phase.OPEN, None),
    wire.META:       (Phase.OPEN, "we sent GET_META, and it matches the peer's HELLO"),
    wire.PEERS:      (Phase.OPEN, None),
    wire.STATUS_REQ: (Phase.OPEN, None),
    wire.STATUS:     (Phase.OPEN, "we sent STATUS_REQ"),
}


class Reason(enum.Enum):
    """Why a link ended. Policy (retry, back off, ban, log level) reads these, never wording."""
    NOTHING_TO_EXCHANGE = "nothing to exchange"
    BOTH_COMPLETE = "both complete"
    IDLE = "idle"
    SHUTDOWN = "shutdown"
    CLIENT_DONE = "client done"
    SELF = "connected to ourselves"
    DUPLICATE = "duplicate link"
    BANNED = "banned"
    OTHER_FILE = "peer syncs a different file"
    VERSION = "protocol version differs"
    PROTOCOL = "protocol error"
    HANDSHAKE_TIMEOUT = "no hello within the handshake timeout"
    REQUEST_TIMEOUT = "request timed out"
    NOT_READING = "peer stopped reading"
    BAD_PIECES = "pieces failed their hash"
    LOST = "connection lost"
    WRITE_FAILED = "data file write failed"

    @property
    def benign(self):
        """Closed on purpose with nothing wrong: the address is fine to dial again later."""
        return self in _BENIGN

    @property
    def peer_fault(self):
        return self is Reason.PROTOCOL


_BENIGN = frozenset({Reason.NOTHING_TO_EXCHANGE, Reason.BOTH_COMPLETE, Reason.IDLE})


class Closed(Exception):
    """This link ends, for `reason`; `detail` is for the log only."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


class Session:
    def __init__(self, hello, info=None, chunk_pieces=1, now=0.0):
        self.greeting = wire.encode(hello)  # send first
        self.meta_id = hello.meta_id
        self.phase = Phase.HANDSHAKE
        self.info, self.full, self.chunk_pieces = None, 0, 1
        self._limit = NO_INFO_PIECES  # pieces a range may name
        # the peer, from its HELLO
        self.peer_id = None
        self.peer_meta = wire.NO_META
        self.listen_port = None  # 0: a client (e.g. `node status`), not a peer
        self.knows_file = False  # its HELLO named the file, or it sent a BITFIELD
        self.peer_has = 0
        self.strikes = 0  # pieces it sent that failed their hash
        # requests both ways
        self.mine = {}  # first -> (count, deadline): our requests, until verified or rejected
        self.mine_bits = 0
        self.arrived = set()  # firsts of our requests whose data came in (maybe not verified yet)
        self.serving = 0  # the peer's requests not answered yet
        self.meta_asked = self.status_asked = False
        # what we told the peer
        self.sent_have = None  # None: no BITFIELD yet
        self.sent_peers = set()
        self.peers_version = 0  # how much of the node's peer list (hub.peer_addrs) we went through
        self.last_rx = now
        self.frames_in = 0  # frames read from the peer, of every kind
        self.last_data = None  # when piece data last arrived (None: never)
        self.rate = None  # piece bytes/s on this link, over the last window (None: not measured)
        self._rate_bytes, self._rate_since = 0, now
        # the receive path
        self._buf = bytearray(READ_AHEAD)
        self._pos = self._end = 0  # unread bytes of _buf
        self._want = wire.HEADER.size  # bytes the parser waits for in _buf
        self._kind = None  # kind of the frame whose payload is next, or None: a header is next
        self._n = 0  # bytes of that payload to read into _buf (a PIECES frame: its range only)
        self._pieces_bytes = 0  # piece data in the PIECES frame being read
        self._pieces = None  # [request first, next piece, end piece] inside a PIECES payload
        self._chunk = None  # [buf, filled, size] the chunk buffer being filled
        self.into_chunk = False  # the last recv_view() was the chunk buffer: piece data, its length known
        if info is not None:
            self.set_info(info, chunk_pieces)

    def set_info(self, info, chunk_pieces=1):
        """The file became known (ours, or learned from a peer): ranges can be checked now."""
        self.info, self.full, self.chunk_pieces = info, (1 << info.n_pieces) - 1, chunk_pieces
        self._limit = info.n_pieces
        self.peer_has &= self.full

    @property
    def chunk_bytes(self):
        return self.chunk_pieces * self.info.piece_size

    # -- receiving ----------------------------------------------------------------------------
    def recv_view(self):
        """Where the next received bytes go: a chunk buffer while piece data is due, else the
        read-ahead, compacted and grown to hold the frame being waited for."""
        if self._chunk is not None and self._pos == self._end:
            self.into_chunk = True
            buf, filled, size = self._chunk
            return memoryview(buf)[filled:size]
        self.into_chunk = False
        buf, pos, end = self._buf, self._pos, self._end
        if pos:
            buf[:end - pos] = buf[pos:end]  # same length: allowed while old views exist
            self._pos, self._end = 0, end - pos
        if len(buf) < self._want:  # a big control frame (bitfield, meta): a bigger buffer
            grown = bytearray(max(self._want, 2 * len(buf)))
            grown[:self._end] = buf[:self._end]
            self._buf = buf = grown
        return memoryview(buf)[self._end:max(self._want, READ_AHEAD)]

    def received(self, n, now):
        """n bytes were written into the last recv_view(). True: they were piece data and the
        chunk buffer is not full yet, so there is no event to look for: recv again."""
        self.last_rx = now
        if not self.into_chunk:
            self._end += n
            return False
        chunk = self._chunk
        chunk[1] += n
        self._data_in(n, now)
        return chunk[1] < chunk[2]

    def _data_in(self, n, now):
        self.last_data = now
        self._rate_bytes += n
        if now - self._rate_since >= RATE_WINDOW_S:
            self.rate = self._rate_bytes / (now - self._rate_since)
            self._rate_bytes, self._rate_since = 0, now

    def give_buffer(self, buf):
        """The buffer for the next chunk of piece data (after NEED_BUFFER)."""
        at, end = self._pieces[1], self._pieces[2]
        self._chunk = [buf, 0, self.info.span(at, min(self.chunk_pieces, end - at))[1]]

    def next_event(self):
        """The next event from what was received: NEED_DATA, NEED_BUFFER, a Chunk, a FileInfo
        (the peer's metadata, checked), or a wire message (its bookkeeping already done)."""
        while True:
            if self._pieces is not None:
                return self._next_chunk()
            pos, kind = self._pos, self._kind
            if kind is None:
                if self._end - pos < _HEADER:
                    self._want = _HEADER
                    return NEED_DATA
                kind, n = wire.decode_header(self._buf, pos)
                if RULES[kind][0] is not self.phase:
                    raise wire.WireError(f"{wire.NAMES[kind]} not allowed in phase {self.phase.value}")
                self.frames_in += 1
                pos = self._pos = pos + _HEADER
                if kind == wire.PIECES:
                    self._pieces_bytes, n = n - _RANGE, _RANGE
            else:
                n = self._n
            if self._end - pos < n:
                self._kind, self._n, self._want = kind, n, n
                return NEED_DATA
            self._kind, self._pos = None, pos + n
            payload = memoryview(self._buf)[pos:pos + n]
            if kind == wire.PIECES:
                self._start_pieces(*wire.RANGE.unpack(payload))
                return NEED_BUFFER
            ev = self._apply(wire.decode_payload(kind, payload))
            if ev is not None:
                return ev

    def feed(self, data, now=0.0):
        """Bytes in, events out, through the same path (piece data into fresh buffers): for the
        status client, tests and fuzzers."""
        data, events = memoryview(data), []
        while True:
            ev = self.next_event()
            if ev is NEED_DATA:
                if not data:
                    return events
                view = self.recv_view()
                k = min(len(view), len(data))
                view[:k] = data[:k]
                data = data[k:]
                self.received(k, now)
            elif ev is NEED_BUFFER:
                self.give_buffer(bytearray(self.chunk_bytes))
            else:
                events.append(ev)

    @property
    def pending(self):
        """Bytes received and not yet handed out as events (of a frame begun: its header too)."""
        begun = wire.HEADER.size if self._kind is not None else 0
        return self._end - self._pos + begun + (self._chunk[1] if self._chunk else 0)

    def _check_range(self, first, count):
        if count < 1 or first + count > self._limit:
            raise wire.WireError(f"piece range {first}+{count} outside 0..{self._limit}")

    def _start_pieces(self, first, count):
        if self.mine.get(first, (None,))[0] != count or first in self.arrived:
            raise wire.WireError(f"pieces {first}+{count} were not requested")
        if self._pieces_bytes != self.info.span(first, count)[1]:
            raise wire.WireError(f"pieces {first}+{count} carry {self._pieces_bytes} bytes")
        self.arrived.add(first)
        self._pieces = [first, first, first + count]

    def _next_chunk(self):
        """NEED_BUFFER, NEED_DATA or a full Chunk; the PIECES payload ends with its last Chunk."""
        if self._chunk is None:
            return NEED_BUFFER
        buf, filled, size = self._chunk
        pos = self._pos
        take = min(size - filled, self._end - pos)
        if take:  # what the read-ahead holds already
            buf[filled:filled + take] = memoryview(self._buf)[pos:pos + take]
            self._pos = pos + take
            self._data_in(take, self.last_rx)
            filled = self._chunk[1] = filled + take
        if filled < size:
            return NEED_DATA
        req, at, end = self._pieces
        k = min(self.chunk_pieces, end - at)
        self._chunk = None
        if at + k < end:
            self._pieces[1] = at + k
            return Chunk(at, k, buf, memoryview(buf)[:size], None)
        self._pieces = None
        return Chunk(at, k, buf, memoryview(buf)[:size], req)

    def _apply(self, msg):
        """The link's bookkeeping for one message; returns the event, or None to read on."""
        t = type(msg)
        if t is wire.Have:
            self._check_range(msg.first, msg.count)
            self.peer_has |= span_bits(msg.first, msg.count)
        elif t is wire.Request:
            self._check_range(msg.first, msg.count)
            if self.info is not None and self.info.span(msg.first, msg.count)[1] > max(
                    MAX_SERVE_BYTES, self.info.piece_size):
                raise wire.WireError(f"request of {msg.count} pieces is too large")
            if self.serving >= MAX_PEER_REQUESTS:
                raise wire.WireError(f"more than {MAX_PEER_REQUESTS} requests unanswered")
            self.serving += 1
        elif t is wire.Bitfield:
            bits = int.from_bytes(msg.bits, "little")
            self.peer_has = bits & self.full if self.info else bits
            self.knows_file = True  # only a node that knows the file sends a bitfield
        elif t is wire.Reject:
            entry = self.mine.pop(msg.first, None)
            if entry is None:
                return None  # stale: we timed that request out already
            self.mine_bits &= ~span_bits(msg.first, entry[0])  # peer_has stays: "busy" is no "lack"
            return wire.Reject(msg.first, entry[0])
        elif t is wire.Meta:
            return self._on_meta(msg)
        elif t is wire.Status:
            if not self.status_asked:
                raise wire.WireError("unsolicited STATUS")
            self.status_asked = False
        elif t is wire.Hello:
            self._on_hello(msg)
        return msg

    def _on_hello(self, msg):
        if msg.version != wire.VERSION:
            raise Closed(Reason.VERSION, f"{msg.version} != {wire.VERSION}")
        if self.meta_id != wire.NO_META and msg.meta_id not in (wire.NO_META, self.meta_id):
            raise Closed(Reason.OTHER_FILE)
        self.peer_id, self.peer_meta, self.listen_port = msg.node_id, msg.meta_id, msg.port
        self.knows_file = msg.meta_id != wire.NO_META
        self.phase = Phase.OPEN

    def _on_meta(self, msg):
        if not self.meta_asked:
            raise wire.WireError("unsolicited META")
        self.meta_asked = False
        if self.info is not None:
            return None  # learned meanwhile from another peer
        try:
            check_file_info(msg.size, msg.piece_size, len(msg.hashes), field="meta")
        except ConfigError as e:
            raise wire.WireError(f"bad metadata: {e}") from None
        info = FileInfo(msg.size, msg.piece_size, msg.hashes)
        if self.peer_meta != wire.NO_META and info.meta_id != self.peer_meta:
            raise wire.WireError("metadata does not match the meta_id of the peer's hello")
        return info

    # -- sending: each returns the frames to send, and notes what they promise ---------------
    def request(self, first, count, now):
        nbytes = self.info.span(first, count)[1]
        deadline = now + REQUEST_TIMEOUT_S + REQUEST_TIMEOUT_PER_MB_S * nbytes / 2**20
        self.mine[first] = (count, deadline)
        self.mine_bits |= span_bits(first, count)
        return wire.encode(wire.Request(first, count))

    def answered(self):
        """One of the peer's requests is answered (served or rejected)."""
        self.serving -= 1

    def reject(self, first, count):
        self.answered()
        return wire.encode(wire.Reject(first, count))

    def ask_meta(self):
        if self.info is not None or not self.knows_file or self.meta_asked:
            return []
        self.meta_asked = True
        return [wire.encode(wire.GetMeta())]

    def ask_status(self):
        self.status_asked = True
        return wire.encode(wire.StatusRequest())

    def announce(self, have, complete):
        """BITFIELD first, then HAVE runs of what is new. Pieces the peer holds already are not
        announced while we fetch (it would never request them); once complete, all is told, so
        the peer can see both sides complete and close the link."""
        if self.sent_have is None:
            self.sent_have = have
            return [self._bitfield(have)]
        new = have & ~self.sent_have
        if not complete:
            new &= ~self.peer_has
        if not new:
            return []
        frames = [wire.encode(wire.Have(f, c)) for f, c in runs(new)]
        if len(frames) > HAVE_RUNS_MAX:
            frames, new = [self._bitfield(have)], have
        self.sent_have |= new
        return frames

    def _bitfield(self, have):
        return wire.encode(wire.Bitfield(have.to_bytes((self.info.n_pieces + 7) // 8, "little")))

    def share_peers(self, addrs, version):
        """PEERS with those of `addrs` (the node's list since our peers_version, up to `version`)
        not told to this peer yet. Past one frame's worth, the rest waits for the next call."""
        fresh = [a for a in addrs if a not in self.sent_peers]
        if len(fresh) > wire.MAX_PEERS_PER_FRAME:
            fresh = fresh[:wire.MAX_PEERS_PER_FRAME]  # peers_version stays: what is sent is skipped
        else:
            self.peers_version = version
        if not fresh:
            return []
        self.sent_peers.update(fresh)
        return [wire.encode(wire.Peers(tuple(fresh)))]

    # -- after a chunk was verified -----------------------------------------------------------
    def chunk_done(self, chunk):
        """Only now are these pieces no longer ours to wait for: while they were being hashed,
        the endgame could not ask this same peer for them again."""
        if chunk.done is not None:
            del self.mine[chunk.done]
            self.arrived.discard(chunk.done)
        self.mine_bits &= ~span_bits(chunk.first, chunk.count)

    def bad_pieces(self, bits):
        """Pieces from this peer failed their hash; returns its strikes so far."""
        self.peer_has &= ~bits
        self.strikes += bits.bit_count()
        return self.strikes

    # -- time ---------------------------------------------------------------------------------
    def overdue(self, now):
        """A request of ours whose data has not started arriving by its deadline, on a link that
        brought no piece data for REQUEST_STALL_S either: the peer serves a link's requests in
        order, and on a capped uplink shared by many links a queued request waits its turn."""
        if self.last_data is not None and now - self.last_data < REQUEST_STALL_S:
            return False
        return any(deadline < now for first, (_, deadline) in self.mine.items() if first not in self.arrived)

    def close(self):
        """The link is over: returns the pieces we had asked for and not got (to release)."""
        self.phase = Phase.CLOSED
        bits, self.mine, self.mine_bits = self.mine_bits, {}, 0
        return bits
