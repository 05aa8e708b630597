"""One peer connection: a reader greenlet running a blocking-style loop (read a frame, act on it),
a writer greenlet that owns every send, and (intake.py) a verifier greenlet for received pieces.

Rule: only the writer sends. Both peers request from each other on one full-duplex link; if one
greenlet both read and sent large responses, two peers sending at once with full socket buffers
would each wait for the other to read, forever. The reader never blocks on the writer: what a peer
may queue with us is bounded (MAX_PEER_REQUESTS), and a peer that exceeds it is closed.
How frames are read and how received pieces are verified and accounted for: intake.py.
"""

import random
import time

import gevent
from gevent.queue import Queue

from . import log, picker, wire
from .config import ConfigError, FileInfo, check_file_info
from .intake import Closed, Intake
from .storage import SEND_STALL_S

# One REQUEST asks for a run of consecutive pieces: what is left to fetch, shared among the links
# and their pipelines, within these bounds. Few peers and much left (1 GiB from one seeder): big
# frames, as per-frame costs dominate (measured S1: 1 MiB 4.5 s, 4 MiB 2.5 s). Many peers or little
# left: small frames, so the work spreads over every peer that has it.
REQUEST_BYTES_MIN = 1 << 20
REQUEST_BYTES_MAX = 4 << 20
PIPELINE_REQUESTS = 3  # requests kept outstanding per peer, so the link never idles
MAX_PEER_REQUESTS = 64  # requests a peer may queue with us before we call it a flood
MAX_SERVE_BYTES = 64 << 20  # largest single REQUEST we serve (one max-size piece)
HANDSHAKE_TIMEOUT_S = 5.0  # a peer that connects and says nothing frees its slot this fast
REQUEST_TIMEOUT_S = 4.0  # plus REQUEST_TIMEOUT_PER_MB_S per MiB, as Kraken scales piece deadlines
REQUEST_TIMEOUT_PER_MB_S = 4.0
USELESS_CLOSE_S = 3.0  # a link with nothing to exchange this long is closed (sockets are scarce)
IDLE_TIMEOUT_S = 20.0  # no frame at all from the peer this long, nothing pending: it is gone
HAVE_RUNS_MAX = 64  # beyond this many HAVE frames, one BITFIELD is cheaper

_KICK = object()
PROTOCOL_ERROR = "protocol error"  # prefix of a close reason that is the peer's fault


class Conn(Intake):
    def __init__(self, node, sock, ip, outbound, entry=None):
        self.node = node
        self.state = node.state
        self.sock = sock
        self.ip = ip
        self.outbound = outbound
        self.entry = entry  # PeerEntry of the peer's listening address, once known
        self.peer_id = None
        self.peer_meta = wire.NO_META
        self.knows_file = False  # the peer knows the file: its hello said so, or it sent a bitfield
        self.has = 0  # pieces the peer holds
        self.mine = {}  # first -> (count, deadline): our outstanding requests to this peer
        self.mine_bits = 0
        self.sent_have = None  # what we last told the peer we hold (None: nothing yet)
        self.sent_peers = set()
        self.sent_peers_version = -1
        self.serving = 0  # peer's requests queued with our writer
        self.meta_asked = False
        self.strikes = 0
        self.last_useful = self.last_rx = time.monotonic()
        self.sending_since = None  # set while the writer is blocked in a send
        self.reason = None
        self.registered = False
        self.productive = False  # a piece moved either way: the peer works, forget its failures
        self.offer = False  # we dialled it while complete: only to give (see Swarm._dial_budget)
        self.rng = random.Random()
        self._queue = Queue()
        self._kicked = False
        self._init_intake()
        self._writer = self._verifier = self._reader = None
        self._cleaning = False
        self._reader_waiting = False

    @property
    def name(self):
        return self.entry.addr[0] if self.entry else self.ip

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self):
        """The connection's life, on the calling greenlet. Never raises for a peer's doing."""
        self._reader = gevent.getcurrent()
        try:
            self._handshake()
            if not self.node.register(self):
                return
            self.registered = self.entry.source != "client"
            self._writer = gevent.spawn(self._write_loop)
            self.kick()
            self._read_loop()
        except wire.WireError as e:
            self.reason = self.reason or f"{PROTOCOL_ERROR}: {e}"
        except Closed as e:
            self.reason = self.reason or str(e)
        except (OSError, EOFError, gevent.Timeout) as e:
            self.reason = self.reason or f"{type(e).__name__}: {e}"
        finally:
            self._cleanup()

    def close(self, why):
        """End the connection, from any greenlet. The reader wakes wherever it waits: in recv
        (EOF after the shutdown), or on the verifier's full queue (Closed is raised in it)."""
        if self.reason is None:
            self.reason = why
        try:
            self.sock.shutdown(2)
        except OSError:
            pass
        reader = self._reader
        if self._reader_waiting and reader is not gevent.getcurrent() and not self._cleaning:
            reader.kill(Closed(why), block=False)

    def _cleanup(self):
        self._cleaning = True  # from here on, close() must not interrupt the reader
        if self.reason is None:
            self.reason = "closed"
        try:
            for g in (self._writer, self._verifier):
                if g is not None:
                    # Wait for each to die: a writer already woken could otherwise request more
                    # pieces after the release below, and those would stay "requested" forever.
                    g.kill(block=True, timeout=1.0)
        except Closed:
            pass  # a close() from elsewhere raced with our own ending: we are ending anyway
        finally:
            self.sock.close()
            for _ in range(self._buffers_out):  # in our queue or still in the pool: not reused
                self.node.storage.give_buffer(None)
            self._buffers_out = 0
            if self.mine_bits:
                self.state.release(self.mine_bits & ~self.state.have)
            self.mine, self.mine_bits = {}, 0
            self.node.unregister(self)
            if self.reason.startswith(PROTOCOL_ERROR):  # the peer's fault: say so, even mid-handshake
                log.warning("peer_closed", peer=self.name, why=self.reason, result="protocol_error")
            elif self.registered:
                log.info("peer_closed", peer=self.name, why=self.reason, result="closed")

    # -- handshake ----------------------------------------------------------------------------
    def _handshake(self):
        s = self.state
        hello = wire.Hello(s.node_id, self.node.config.port, s.info.meta_id if s.info else wire.NO_META)
        self.sock.sendall(wire.encode(hello))
        with gevent.Timeout(HANDSHAKE_TIMEOUT_S, Closed("no hello within handshake timeout")):
            kind, n = wire.decode_header(self._recv(wire.HEADER.size))
            if kind != wire.HELLO:
                raise wire.WireError(f"expected hello, got {wire.NAMES[kind]}")
            msg = wire.decode_payload(kind, self._recv(n))
        if msg.version != wire.VERSION:
            raise Closed(f"protocol version {msg.version} != {wire.VERSION}")
        if s.info and msg.meta_id not in (wire.NO_META, s.info.meta_id):
            raise Closed("peer syncs a different file (meta_id differs)")
        self.peer_id, self.peer_meta = msg.node_id, msg.meta_id
        self.knows_file = msg.meta_id != wire.NO_META
        self.listen_port = msg.port

    # -- reading ------------------------------------------------------------------------------
    def _read_loop(self):
        while True:
            if self.reason is not None:  # closed from elsewhere: data may still sit in the socket
                raise Closed(self.reason)
            kind, n = wire.decode_header(self._recv(wire.HEADER.size))
            self.last_rx = time.monotonic()
            if kind == wire.PIECES:
                self._on_pieces(n)
                continue
            if kind == wire.META and not self.meta_asked:
                raise wire.WireError("unsolicited meta")
            self._dispatch(wire.decode_payload(kind, self._recv(n)))

    def _dispatch(self, msg):
        t = type(msg)
        if t is wire.Request:
            self._on_request(msg.first, msg.count)
        elif t is wire.Have:
            self._check_range(msg.first, msg.count)
            span = picker.span_bits(msg.first, msg.count)
            self.has |= span
            if span & self.state.missing or self._both_complete():
                self.kick()  # something to request, or both are complete now: else nothing to do
        elif t is wire.Bitfield:
            self.has = int.from_bytes(msg.bits, "little")
            if self.state.info:
                self.has &= self.state.full
            self.knows_file = True  # only a node that knows the file sends a bitfield
            self.kick()
        elif t is wire.Reject:
            self._on_reject(msg.first, msg.count)
        elif t is wire.Peers:
            for addr in msg.addrs:
                self.node.learn_peer(addr, "pex")
        elif t is wire.GetMeta:
            if self.state.info:
                self.send(wire.encode(_meta_msg(self.state.info)))
        elif t is wire.Meta:
            self._on_meta(msg)
        elif t is wire.StatusRequest:
            self.send(wire.encode(wire.Status(self.node.status_json())))
        else:
            raise wire.WireError(f"unexpected {type(msg).__name__} after handshake")

    def _check_range(self, first, count):
        limit = self.state.info.n_pieces if self.state.info else (1 << 22)
        if count < 1 or first + count > limit:
            raise wire.WireError(f"piece range {first}+{count} outside 0..{limit}")

    def _on_request(self, first, count):
        info = self.state.info
        self._check_range(first, count)
        if info is None or not self.state.has_all(first, count):
            self.send(wire.encode(wire.Reject(first, count)))
            return
        if info.span(first, count)[1] > max(MAX_SERVE_BYTES, info.piece_size):
            raise wire.WireError(f"request of {count} pieces is too large")
        if self.serving >= MAX_PEER_REQUESTS:
            raise wire.WireError(f"more than {MAX_PEER_REQUESTS} requests queued")
        self.serving += 1
        self._queue.put((first, count))

    def _on_reject(self, first, count):
        entry = self.mine.pop(first, None)
        if entry is None:
            return  # a stale reject (we already timed the request out)
        span = picker.span_bits(first, entry[0])
        self.mine_bits &= ~span
        self.has &= ~span
        self.state.release(span & ~self.state.have)
        self.kick()

    def _on_meta(self, msg):
        self.meta_asked = False
        if self.state.info is not None:
            return
        try:
            check_file_info(msg.size, msg.piece_size, len(msg.hashes), field="meta")
        except ConfigError as e:
            raise wire.WireError(f"bad metadata: {e}") from None
        info = FileInfo(msg.size, msg.piece_size, msg.hashes)
        if self.peer_meta != wire.NO_META and info.meta_id != self.peer_meta:
            raise wire.WireError("metadata does not match the meta_id of the peer's hello")
        self.node.learn_meta(info, source=self.name)

    # -- writing ------------------------------------------------------------------------------
    def send(self, data):
        self._queue.put(data)

    def kick(self):
        """Something changed: let the writer top up requests and announcements."""
        if not self._kicked:
            self._kicked = True
            self._queue.put(_KICK)

    def _write_loop(self):
        try:
            while True:
                job = self._queue.get()
                self.sending_since = time.monotonic()
                if job is _KICK:
                    self._kicked = False
                    self._on_kick()
                elif type(job) is tuple:
                    self._serve(*job)
                else:
                    self.sock.sendall(job)
                self.sending_since = None
        except Closed as e:
            self.close(str(e))
        except (OSError, EOFError, TimeoutError) as e:
            self.close(f"send failed: {e}")

    def _serve(self, first, count):
        self.serving -= 1
        info = self.state.info
        nbytes = info.span(first, count)[1]
        self.sock.sendall(wire.pieces_header(first, count, nbytes))
        self.node.storage.sendfile(self.sock, first, count)
        self.state.count("bytes_out", nbytes)
        self.last_useful = time.monotonic()
        self.productive = True

    def _on_kick(self):
        """Announce new pieces and peers and top up requests, in one send."""
        s = self.state
        if self.reason is not None:
            return  # closing: request nothing more
        out = []
        done = self._both_complete()
        if s.info is None:
            if self.knows_file and not self.meta_asked:
                self.meta_asked = True
                out.append(wire.encode(wire.GetMeta()))
            self._send_peers(out)
        else:
            self._announce(out)
            self._send_peers(out)
            if not done:
                self._fill_requests(out)
        if out:
            self.sock.sendall(b"".join(out))
        if done:
            raise Closed("both complete")

    def _both_complete(self):
        s = self.state
        return s.complete and self.has & s.full == s.full

    def _announce(self, out):
        s = self.state
        if self.sent_have is None:
            self.sent_have = s.have
            out.append(wire.encode(wire.Bitfield(s.have.to_bytes((s.info.n_pieces + 7) // 8, "little"))))
            return
        # Pieces the peer holds already are not announced: it would never request them, and in
        # a big swarm most HAVE frames would be of that kind. Once we are complete, though, all
        # is told: a link between complete peers is closed by the side that sees both complete.
        new = s.have & ~self.sent_have
        if not s.complete:
            new &= ~self.has
        if not new:
            return
        frames = [wire.encode(wire.Have(f, c)) for f, c in picker.runs(new)]
        if len(frames) > HAVE_RUNS_MAX:
            frames = [wire.encode(wire.Bitfield(s.have.to_bytes((s.info.n_pieces + 7) // 8, "little")))]
            new = s.have
        self.sent_have |= new  # what the peer was told; the pieces left out are told at completion
        out.extend(frames)

    def _send_peers(self, out):
        if self.sent_peers_version == self.state.verified_version:
            return  # nothing new since our last PEERS (the common case: every kick comes here)
        self.sent_peers_version = self.state.verified_version
        fresh = [a for a in self.state.verified_addrs()
                 if a not in self.sent_peers and (self.entry is None or a != self.entry.addr)]
        if fresh:
            fresh = fresh[:wire.MAX_PEERS_PER_FRAME]
            self.sent_peers.update(fresh)
            out.append(wire.encode(wire.Peers(tuple(fresh))))

    def _fill_requests(self, out):
        s = self.state
        info = s.info
        max_count = max(1, self._request_bytes() // info.piece_size)
        swarm = None
        sent = len(out)
        while len(self.mine) < PIPELINE_REQUESTS:
            if swarm is None:
                swarm = [c.has for c in s.conns.values()]
            got = picker.pick(s.missing, s.requested, self.has, swarm, self.rng, max_count,
                              mine=self.mine_bits, have_any=s.have_count > 0, twice=s.requested_twice)
            if got is None:
                break
            first, count = got
            span = picker.span_bits(first, count)
            nbytes = info.span(first, count)[1]
            deadline = time.monotonic() + REQUEST_TIMEOUT_S + REQUEST_TIMEOUT_PER_MB_S * nbytes / 2**20
            self.mine[first] = (count, deadline)
            self.mine_bits |= span
            s.mark_requested(span)
            out.append(wire.encode(wire.Request(first, count)))
        if len(out) > sent:
            s.count("requests_sent", len(out) - sent)

    def _request_bytes(self):
        s = self.state
        left = (s.missing & ~s.requested).bit_count() * s.info.piece_size
        share = left // (PIPELINE_REQUESTS * max(1, len(s.conns)))
        return min(REQUEST_BYTES_MAX, max(REQUEST_BYTES_MIN, share))

    # -- housekeeping (called about once a second) ---------------------------------------------
    def check(self, now):
        """Close the link if the peer stalls (on our requests, or by not reading what we send),
        falls silent, or has nothing left to exchange with us."""
        if any(deadline < now for first, (_, deadline) in self.mine.items() if first not in self.arrived):
            log.warning("peer_stalled", peer=self.name, outstanding=len(self.mine), result="closing")
            self.close("request timed out")
            return
        if self.sending_since is not None and now - self.sending_since > SEND_STALL_S:
            log.warning("peer_stalled", peer=self.name, why="not reading", result="closing")
            self.close("peer stopped reading")
            return
        if now - self.last_rx > IDLE_TIMEOUT_S and not self.mine and not self.serving:
            self.close("idle")
            return
        if self.useful():
            self.last_useful = now
        elif now - self.last_useful > USELESS_CLOSE_S:
            self.close("nothing to exchange")

    def useful(self):
        s = self.state
        if self.mine or self.serving:
            return True
        if s.info is None:
            return self.knows_file
        we_want = s.missing & self.has
        they_want = s.have & ~self.has
        return bool(we_want or they_want)


def _meta_msg(info):
    return wire.Meta(info.size, info.piece_size, info.hashes)
