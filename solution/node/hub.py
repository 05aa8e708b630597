"""What a link may ask of the rest of the node: the seam between one connection and the node.

Rule: a link (conn.py) reaches the node only through its Hub: the pieces we hold, claiming and
releasing pieces to fetch, chunk buffers, verify-and-write, the node's upload slots and
sending from the file, learning peers and the metadata, and the replies every peer gets alike.
Never through Node, NodeState or Storage directly; so a test drives a link against a fake hub,
and the hub is the one place where a link's doings change the node's state.
"""

import time

import gevent
import ujson

from . import log, picker, status, wire
from .budget import UploadPace
from .greenlets import Semaphore
from .state import Source

REQUEST_BYTES_MIN = 1 << 20  # a REQUEST asks for a run of pieces this big at least...
REQUEST_BYTES_MAX = 4 << 20  # ...and at most; in between, what is left shared among the links
PIPELINE_REQUESTS = 3  # requests kept outstanding per peer, so the link never idles
REQUEST_QUEUE_S = 2.0  # and no request bigger than this long at the link's rate (one piece at least)
PACE_SLICE_BYTES = 64 << 10  # with an upload limit, piece data goes out in slices this big
UPLOAD_SLOTS = 4  # requests served at once: on a capped uplink, a piece each peer can pass on soon
UPLOAD_WAIT_S = 3.0  # a request that waits this long for a slot is rejected: the peer asks elsewhere
UPLOAD_QUEUE = 4  # requests that may wait for a slot, node-wide; one more is rejected at once
SPREAD_AFTER_WAIT_S = 0.5  # a seeder whose requests wait this long for a slot sends each piece once first


class Hub:
    def __init__(self, state, swarm, port, on_meta, max_upload_rate=0):
        self.pace = UploadPace(max_upload_rate) if max_upload_rate else None  # shared by all links
        self.state = state
        self.swarm = swarm
        self.port = port
        self._on_meta = on_meta  # on_meta(info, peer): the node takes the file's metadata
        self.storage = None  # once the file is known
        self.sources = set()  # peers that sent us at least one good piece
        self._slots = Semaphore(UPLOAD_SLOTS)
        self._queued = 0  # requests accepted by queue_serve that have no slot yet
        self.uplink_slow = True  # as the last link measured found it: a new link starts so (conn.py)
        self._uplink_measured = False
        self._sent = 0  # pieces we began to send at least once
        self._sent_all = False
        self._meta_frame = None

    def use_storage(self, storage):
        self.storage = storage
        info = storage.info
        self._meta_frame = wire.encode(wire.Meta(info.size, info.piece_size, info.hashes))

    # -- what we are and hold -----------------------------------------------------------------
    def hello(self):
        info = self.state.info
        return wire.Hello(self.state.node_id, self.port, info.meta_id if info else wire.NO_META)

    @property
    def info(self):
        return self.state.info

    @property
    def chunk_pieces(self):
        return self.storage.chunk_pieces if self.storage else 1

    @property
    def have(self):
        return self.state.have

    @property
    def complete(self):
        return self.state.complete

    def both_complete(self, session):
        s = self.state
        return s.complete and session.peer_has & s.full == s.full

    def wants_from(self, session):
        """Does the peer hold something we lack (with the file unknown: does it know it)?"""
        s = self.state
        return bool(s.missing & session.peer_has) if s.info else session.knows_file

    def useful(self, session):
        """Is there anything left to exchange on this link, either way?"""
        if session.mine or session.serving:
            return True
        return self.wants_from(session) or bool(self.state.info and self.state.have & ~session.peer_has)

    def fetchable(self, session):
        """Pieces we could ask this link's peer for now (picker.fetchable)."""
        s = self.state
        return picker.fetchable(s.missing, s.requested, session.peer_has, session.mine_bits, s.requested_twice)

    def news(self, session, span):
        """The peer now holds `span` too: does that give us something to ask it for, or are both
        complete now? (Else its HAVE needs no wake-up.)"""
        s = self.state
        wanted = span & s.missing
        if not wanted:
            return self.both_complete(session)
        return bool(wanted & ~s.requested or self.fetchable(session) & span)  # usually no call

    def can_serve(self, first, count):
        return self.state.info is not None and self.state.has_all(first, count)

    # -- links --------------------------------------------------------------------------------
    def admit(self, conn):
        return self.swarm.admit(conn)

    def leave(self, conn):
        self.swarm.leave(conn)

    def ban(self, conn):
        self.swarm.ban(conn)

    # -- fetching -----------------------------------------------------------------------------
    def pick(self, session, n):
        """Up to n runs of pieces to request from this peer, claimed, as (first, count) pairs.
        The run size and the swarm's availability are worked out once for all n."""
        s = self.state
        if not self.fetchable(session):  # the common case on a busy swarm: no need for the rest
            return []
        swarm, max_count = self.swarm.availability(), max(1, self._request_bytes(session) // s.info.piece_size)
        got, mine = [], session.mine_bits
        while len(got) < n:
            run = picker.pick(s.missing, s.requested, session.peer_has, swarm, s.rng, max_count, mine=mine,
                              have_any=s.have_count > 0, twice=s.requested_twice)
            if run is None:
                break
            span = picker.span_bits(*run)
            s.mark_requested(span)
            mine |= span
            got.append(run)
        s.count("requests_sent", len(got))
        return got

    def _request_bytes(self, session):
        """Few peers and much left (1 GiB from one seeder): big runs, as per-frame costs dominate.
        Many peers or little left: small ones, so the work spreads over every peer that has it.
        A slow link (a capped uplink shared by many): runs it moves in REQUEST_QUEUE_S, so its
        claims stay short and pieces reach the next peer soon."""
        s = self.state
        left = (s.missing & ~s.requested).bit_count() * s.info.piece_size
        share = left // (PIPELINE_REQUESTS * max(1, len(s.conns)))
        nbytes = min(REQUEST_BYTES_MAX, max(REQUEST_BYTES_MIN, share))
        if session.rate is not None:
            nbytes = min(nbytes, max(s.info.piece_size, int(session.rate * REQUEST_QUEUE_S)))
        return nbytes

    def release(self, bits):
        """Claimed pieces that will not come from this link (rejected, timed out, link gone)."""
        if bits:
            self.state.release(bits & ~self.state.have)

    def take_buffer(self, cancel):
        return self.storage.take_buffer(cancel)

    def give_buffer(self, buf):
        self.storage.give_buffer(buf)

    @property
    def data_path(self):
        return self.storage.path

    def write(self, first, data):
        """Verify and write pieces first.. (a pool job; .get() gives the good bitset)."""
        return self.storage.write_async(first, data, skip=self.state.have)

    def account(self, peer, first, count, good, nbytes):
        """A chunk from `peer` was verified: `good` pieces are held now. Returns the pieces it
        brought that are new to us, and those that failed their hash."""
        s = self.state
        span = picker.span_bits(first, count)
        new = good & ~s.have
        bad = span & ~good & ~s.have
        s.count("bytes_in", nbytes)
        s.count("pieces_in", new.bit_count())
        s.count("dup_pieces", (span & s.have).bit_count())
        s.mark_have(good)
        if bad:
            s.count("pieces_bad", bad.bit_count())
            s.release(bad)
        if new:
            self.sources.add(peer)
        return new, bad

    # -- serving ------------------------------------------------------------------------------
    def queue_serve(self):
        """May a request just come in on a slow link wait for a slot? No if every slot is busy
        and UPLOAD_QUEUE wait already: rejected now, its peer asks another holder at once instead
        of holding the claim here for UPLOAD_WAIT_S (the first holder of a new piece is asked by
        all its neighbours at once). True: call dequeued() once it has a slot, is refused, or its
        link ends."""
        if self._slots.locked() and self._queued >= UPLOAD_QUEUE:
            return False
        self._queued += 1
        return True

    def dequeued(self):
        self._queued -= 1

    def upload_slot(self, asked_at):
        """Take one of the node's upload slots for a request made at `asked_at` (monotonic),
        waiting until it is UPLOAD_WAIT_S old at most; False if none came free by then."""
        return self._slots.acquire(timeout=max(0.0, asked_at + UPLOAD_WAIT_S - time.monotonic()))

    def upload_done(self):
        self._slots.release()

    def uplink_measured(self, slow):
        """A link found our replies slow or fast to leave: links not measured yet go by this."""
        self.uplink_slow, self._uplink_measured = slow, True

    def downlink_fast(self):
        """Piece data came faster than a slow uplink could send it: a LAN, most likely. Until an
        upload is measured, links start fast (as a LAN link is never measured: its replies are
        small or absorbed by the socket at once)."""
        if not self._uplink_measured:
            self.uplink_slow = False

    def spread_first(self, first, count, waited):
        """Should a seeder refuse pieces first.., asked for `waited` seconds ago? Yes if its uplink
        is the limit (requests queue for a slot: on a LAN they never wait that long), it sent them
        all before and has pieces it never sent: it is the swarm's only source of those, and the
        peer can get the others from whoever got them (BEP 16's super-seeding, by refusal)."""
        s = self.state
        if not s.complete or waited < SPREAD_AFTER_WAIT_S:
            return False
        span = picker.span_bits(first, count)
        return span & self._sent == span and s.full & ~self._sent != 0

    def sendfile(self, sock, first, count, progress, zero_copy=True):
        """PIECES first..: header, then the bytes straight from the file (or read and sent, on a
        socket the kernel cannot sendfile into: TLS), paced to the node's upload limit if any.
        progress() whenever the socket took some; progress(s) before waiting s for the limit.
        Returns the bytes of piece data sent."""
        offset, nbytes = self.state.info.span(first, count)
        self._sent |= picker.span_bits(first, count)
        sock.sendall(wire.pieces_header(first, count, nbytes))
        end = offset + nbytes
        while offset < end:
            n = end - offset if self.pace is None else min(end - offset, PACE_SLICE_BYTES)
            if self.pace is not None:
                delay = self.pace.delay(n, time.monotonic())
                progress(delay)  # waiting for our own limit is not the peer's stall
                gevent.sleep(delay)
            if zero_copy:
                self.storage.sendfile(sock, offset, n, progress)
            else:
                self.storage.send_copy(sock, offset, n, progress)
            self.state.count("bytes_out", n)  # per slice: a reply cut short still counts what left
            offset += n
        if not self._sent_all and self._sent == self.state.full:  # once only: the flag first
            self._sent_all = True  # a seeder's milestone: the swarm could now finish without it
            log.info("every_piece_sent", bytes_out=self.state.counters["bytes_out"])
        return nbytes

    def meta_frame(self):
        """META, encoded once per file; None while we do not know it either."""
        return self._meta_frame

    def status_frame(self):
        return wire.encode(wire.Status(ujson.dumps(status.snapshot(self.state)).encode()))

    # -- learning -----------------------------------------------------------------------------
    @property
    def peers_version(self):
        return self.state.verified_version

    def peer_addrs(self, since):
        """Verified addresses added since version `since` of the list."""
        return self.state.verified_addrs(since)

    def learn_peers(self, addrs):
        for addr in addrs:
            self.state.add_peer(addr, Source.PEX)

    def learn_meta(self, info, peer):
        if self.state.info is None:
            self._on_meta(info, peer)
