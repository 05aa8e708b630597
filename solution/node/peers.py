"""Who we talk to: the listening server, the dialer, and the once-a-second housekeeping.

Rule: connections are bounded by two pools (inbound and outbound), so a swarm of 60 nodes never
builds a full mesh of sockets; a link with nothing left to exchange is closed (see conn.Conn.check),
and the dialer then spends the freed slot on a peer that may still need us or have what we need.
"""

import time

import gevent
from gevent import socket
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from . import log
from .conn import Conn
from .state import USELESS_RETRY_S, PeerEntry

MAX_OUTBOUND = 8  # links we open at most: while starved (below), or while complete (offers)
FEW_OUTBOUND = 3  # links we open while pieces keep arriving. Each link costs both ends a
#                   handshake, bitfields, PEERS and a HAVE per chunk; on a CPU-bound machine fewer
#                   links finish sooner (side by side, S3 60 nodes: 8 links 1.57-1.66 s, 4 links
#                   1.10-1.47, 3 links 1.15-1.33; S2 16 nodes: 8 links 2.15-3.01, 3 links 1.74-1.84;
#                   2 links were no faster than 3)
STARVED_TICKS = 2  # dial intervals in a row without a new piece: then open up to MAX_OUTBOUND
QUIET_TICKS = 2  # dial intervals in a row without sending a piece: then a complete node offers
MAX_INBOUND = 24  # links we accept; leaves room for every dialler of a small swarm
INBOUND_OVERFLOW = 8  # accepted past MAX_INBOUND only to be closed at once, not left in the backlog
MAX_INBOUND_PER_IP = 4  # an honest peer needs one link (two while a doubled dial resolves)
CONNECT_TIMEOUT_S = 2.0  # peers share a LAN: a connect that takes longer is to a dead address
DIAL_INTERVAL_S = 0.5  # the dialer also wakes at once when slots free up or peers appear
OFFERS_AT_ONCE = 2  # a complete node's dials (offers) in flight, until one of them proves needed
HOUSEKEEPING_S = 1.0  # how often stalled and useless links are looked for
BAN_S = 60.0  # a peer that sent bad pieces repeatedly is ignored this long
STOP_GRACE_S = 0.1  # at shutdown, links get this long to end cleanly before they are killed
BENIGN_ENDS = ("nothing to exchange", "both complete", "idle")  # closed on purpose, not failures


class Swarm:
    def __init__(self, node):
        self.node = node
        self.state = node.state
        self.in_pool = Pool(MAX_INBOUND + INBOUND_OVERFLOW)
        self.out_pool = Pool(MAX_OUTBOUND)
        self.server = None
        self.banned = {}  # node_id or ip -> until (monotonic)
        self.inbound_by_ip = {}  # ip -> open inbound sockets, handshaking or not
        self.offers_needed = False  # the last link we dialled while complete moved pieces
        self._tick_at = float("-inf")  # the last dial interval looked at by _still_ticks
        self._tick_mark = None  # what the node had got or sent then
        self._still = 0  # intervals in a row without progress
        self._next_offer = 0.0
        self._wake = Event()
        self._loops = []

    def start(self):
        cfg = self.node.config
        self.server = StreamServer((cfg.bind, cfg.port), self._accept, spawn=self.in_pool, backlog=128)
        self.server.start()
        self._loops = [gevent.spawn(self._dial_loop), gevent.spawn(self._housekeeping)]
        for g in self._loops:
            g.link_exception(self.node.crash)

    def stop(self):
        """Stop accepting, close every link, and wait briefly for their greenlets."""
        if self.server is not None:
            self.server.close()
            log.info("listener_closed", result="ok")
        for g in self._loops:
            g.kill(block=False)
        conns = list(self.state.conns.values())
        for c in conns:
            c.close("shutdown")  # registered links end their own way: EOF, cleanup, log line
        self.in_pool.join(timeout=STOP_GRACE_S)
        self.out_pool.join(timeout=STOP_GRACE_S)
        for pool in (self.in_pool, self.out_pool):
            pool.kill(block=True, timeout=STOP_GRACE_S)  # handshakes and dials in progress
        log.info("connections_closed", count=len(conns), result="ok")

    def wake(self):
        self._wake.set()

    # -- inbound ------------------------------------------------------------------------------
    def _accept(self, sock, addr):
        ip = addr[0]
        inbound = sum(1 for c in self.state.conns.values() if not c.outbound)
        from_ip = self.inbound_by_ip.get(ip, 0)
        if inbound >= MAX_INBOUND or from_ip >= MAX_INBOUND_PER_IP:
            log.debug("inbound_refused", peer=ip, inbound=inbound, from_ip=from_ip, result="busy")
            sock.close()
            return
        self.inbound_by_ip[ip] = from_ip + 1
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            Conn(self.node, sock, ip, outbound=False).run()
        finally:
            left = self.inbound_by_ip.pop(ip) - 1
            if left:
                self.inbound_by_ip[ip] = left

    # -- outbound -----------------------------------------------------------------------------
    def _dial_loop(self):
        while True:
            self._wake.wait(DIAL_INTERVAL_S)
            self._wake.clear()
            now = time.monotonic()
            for entry in self.state.dial_candidates(now, self._dial_budget(now)):
                entry.dialing = True
                self.out_pool.spawn(self._dial, entry)

    def _dial_budget(self, now):
        """How many dials to start now. An incomplete node keeps FEW_OUTBOUND links while pieces
        arrive, and opens up to MAX_OUTBOUND once it starves: the pieces it lacks may be on peers
        it has no link to (many sources), or its peers may be slow or gone.
        A complete node needs nothing: its dials only offer pieces, to peers that might not find
        it themselves, and only once it is quiet (it sent no piece for QUIET_TICKS intervals).
        While peers fetch from it, the swarm has found it: a seeder that offered while it served
        dialled 16 of 59 nodes that would have fetched from each other anyway (60 nodes sharing
        one 64 KiB piece, side by side: 0.37-0.39 s against 0.45-0.46). Once quiet, until an
        offer proves needed (the link moved pieces), it makes one per interval, OFFERS_AT_ONCE
        at most: otherwise 60 finished nodes would each sweep all 59 others at the end of a
        sync, thousands of handshakes in the CPU time the last nodes need (measured in S3: 720
        of its 1230 links)."""
        free = self.out_pool.free_count()
        still = self._still_ticks(now)
        if not self.state.complete:
            if still >= STARVED_TICKS:
                return free
            return max(0, FEW_OUTBOUND - (MAX_OUTBOUND - free))
        if still < QUIET_TICKS:
            return 0
        if self.offers_needed:
            return free
        if MAX_OUTBOUND - free >= OFFERS_AT_ONCE or now < self._next_offer:
            return 0
        self._next_offer = now + DIAL_INTERVAL_S
        return 1

    def _still_ticks(self, now):
        """Dial intervals in a row in which the node got nowhere: no new piece while it fetches,
        no piece sent once it is complete. Counted in intervals the dialer saw, not in clock
        time: time the process spent stopped or busy is no evidence."""
        if now - self._tick_at >= DIAL_INTERVAL_S:
            self._tick_at = now
            s = self.state
            mark = ("sent", s.counters["bytes_out"]) if s.complete else ("have", s.have_count)
            self._still = self._still + 1 if mark == self._tick_mark else 0
            self._tick_mark = mark
        return self._still

    def _dial(self, entry):
        self.state.count("dials")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if self.node.config.bind != "0.0.0.0":
                sock.bind((self.node.config.bind, 0))
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(entry.addr)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            sock.close()
            entry.dialing = False
            entry.failed(time.monotonic())
            log.debug("dial_failed", peer=entry.addr[0], why=str(e), fails=entry.fails, result="retry_later")
            return
        entry.dialing = False
        conn = Conn(self.node, sock, entry.addr[0], outbound=True, entry=entry)
        conn.run()
        if conn.peer_id is None and not entry.is_self:
            entry.failed(time.monotonic())

    # -- the connection table -----------------------------------------------------------------
    def register(self, conn):
        """A handshake finished: admit the link, or refuse it (self, duplicate, banned)."""
        s = self.state
        if conn.peer_id == s.node_id:
            if conn.entry is not None:
                conn.entry.is_self = True
            log.debug("self_connection", addr=conn.ip, result="ignored")
            return False
        now = time.monotonic()
        if max(self.banned.get(conn.peer_id, 0), self.banned.get(conn.ip, 0)) > now:
            conn.reason = "banned"
            return False
        if conn.entry is None:
            if conn.listen_port == 0:  # a client (e.g. `node status`): served, not a peer
                conn.entry = PeerEntry((conn.ip, 0), "client")
                return True
            conn.entry = s.add_peer((conn.ip, conn.listen_port), "inbound")
        other = s.conns.get(conn.peer_id)
        if other is not None:
            if self._dialer_id(conn) >= self._dialer_id(other):
                log.debug("duplicate_connection", peer=conn.name, result="dropped_new")
                conn.reason = "duplicate"
                return False
            other.close("duplicate")
            self._forget(other)
        s.conns[conn.peer_id] = conn
        conn.entry.conn = conn
        conn.offer = conn.outbound and s.complete
        s.mark_verified(conn.entry)
        log.info("peer_connected", peer=conn.name, direction="out" if conn.outbound else "in",
                 conns=len(s.conns), result="ok")
        return True

    def _dialer_id(self, conn):
        # Both ends of a doubled link agree to keep the one opened by the smaller node id.
        return self.state.node_id if conn.outbound else conn.peer_id

    def unregister(self, conn):
        if not self._forget(conn):
            return
        entry, now = conn.entry, time.monotonic()
        entry.complete = bool(self.state.info) and conn.has & self.state.full == self.state.full
        if conn.offer:
            self.offers_needed = conn.productive
        if conn.reason in BENIGN_ENDS:
            entry.fails = 0
            entry.next_try = max(entry.next_try, now + USELESS_RETRY_S)
        elif conn.reason != "shutdown":
            if conn.productive:
                entry.fails = 0
            entry.failed(now)  # errors back off, even after a good handshake: never a tight loop
        self.wake()

    def _forget(self, conn):
        s = self.state
        if s.conns.get(conn.peer_id) is not conn:
            return False
        del s.conns[conn.peer_id]
        if conn.entry is not None and conn.entry.conn is conn:
            conn.entry.conn = None
        return True

    def ban(self, conn):
        until = time.monotonic() + BAN_S
        self.state.count("bans")
        self.banned[conn.peer_id] = self.banned[conn.ip] = until  # by address too: ids are cheap
        if conn.entry is not None:
            conn.entry.next_try = until
        log.warning("peer_banned", peer=conn.name, secs=BAN_S, result="banned")

    def kick_all(self):
        for c in list(self.state.conns.values()):
            c.kick()

    # -- housekeeping -------------------------------------------------------------------------
    def _housekeeping(self):
        while True:
            gevent.sleep(HOUSEKEEPING_S)
            now = time.monotonic()
            for c in list(self.state.conns.values()):
                c.check(now)
