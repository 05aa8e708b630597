"""Who we talk to: the listening server, the dialer, and the once-a-second housekeeping.

Rule: connections are bounded by two pools (inbound and outbound), so a swarm of 60 nodes never
builds a full mesh of sockets; a link with nothing left to exchange is closed (see conn.Conn.check),
and the dialer then spends the freed slot on a peer that may still need us or have what we need.
The Swarm owns admission (self, duplicates, bans) and what a link's end means for its address
(retry, back off): it reads the link's Reason, never its wording.
"""

import time

import gevent
from gevent import socket
from gevent.event import Event

from . import log
from .conn import Conn
from .greenlets import Group, until_tick
from .session import Reason
from .state import PeerEntry, Source

MAX_OUTBOUND = 8  # links we open at most: while starved (below), or while complete (offers)
FEW_OUTBOUND = 3  # links we open while pieces keep arriving: fewer finish sooner when CPU-bound
STARVED_TICKS = 2  # dial intervals in a row without a new piece: then open up to MAX_OUTBOUND
QUIET_TICKS = 2  # dial intervals in a row without sending a piece: then a complete node offers
MAX_INBOUND = 24  # links we accept; leaves room for every dialler of a small swarm
INBOUND_OVERFLOW = 8  # accepted past MAX_INBOUND only to be closed at once, not left in the backlog
MAX_INBOUND_PER_IP = 4  # an honest peer needs one link (two while a doubled dial resolves)
CONNECT_TIMEOUT_S = 2.0  # peers share a LAN: a connect that takes longer is to a dead address
OFFER_CONNECT_TIMEOUT_S = 0.25  # an offer is a courtesy: a connect pending longer is to a host not up
DIAL_INTERVAL_S = 0.5  # the dialer also wakes at once when slots free up or peers appear
OFFERS_AT_ONCE = 2  # a complete node's dials (offers) in flight, until one of them proves needed
OFFER_SPACING_S = 0.5  # the swarm as a whole retries an offer to an address that did not answer this often
HOUSEKEEPING_S = 1.0  # how often stalled and useless links are looked for
BAN_S = 60.0  # a peer that sent bad pieces repeatedly is ignored this long
STOP_GRACE_S = 0.1  # at shutdown, links get this long to end cleanly before they are killed
LISTEN_BACKLOG = 128  # connects the kernel completes while we do not accept (start-up, full pool)
ACCEPT_RETRY_S = 0.1  # after a failed accept (out of descriptors): let links close first


class Swarm:
    def __init__(self, state, config, crash, gate=None):
        self.state = state
        self.config = config
        self.gate = gate  # tls.Gate: links are TLS between members only; None: open
        self._crash = crash  # crash(greenlet): a loop of ours died of a bug
        self.hub = None
        self.in_pool = Group(MAX_INBOUND + INBOUND_OVERFLOW)
        self.out_pool = Group(MAX_OUTBOUND)
        self._listener = None
        self._accepting = None
        self.banned = {}  # node_id or ip -> until (monotonic)
        self.inbound_by_ip = {}  # ip -> open inbound sockets, handshaking or not
        self.clients = set()  # admitted links that are not peers (port 0: `node status`)
        self.offers_needed = False  # the last link we dialled while complete moved pieces
        self._tick_at = float("-inf")  # the last dial interval looked at by _still_ticks
        self._tick_mark = None  # what the node had got or sent then
        self._still = 0  # intervals in a row without progress
        self._next_offer = 0.0
        self._wake = Event()
        self._loops = []

    def listen(self, hub):
        """Bind and listen: from here peers' connects complete (the kernel queues them), though
        none is accepted before open(). Raises OSError if the address cannot be had."""
        cfg, self.hub = self.config, hub
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((cfg.bind, cfg.port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        self._listener = sock

    def open(self):
        """Accept links and start dialling."""
        if self._loops:
            return
        self._accepting = gevent.spawn(self._accept_loop)
        self._loops = [self._accepting, gevent.spawn(self._dial_loop), gevent.spawn(self._housekeeping)]
        for g in self._loops:
            g.link_exception(self._crash)

    def stop(self):
        """Stop accepting, close every link, and wait briefly for their greenlets."""
        if self._accepting is not None:
            self._accepting.kill()  # before the close, so accept() is not woken by it
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            log.info("listener_closed", result="ok")
        for g in self._loops:
            g.kill(block=False)
        conns = list(self.state.conns.values()) + list(self.clients)
        for c in conns:
            c.close(Reason.SHUTDOWN)  # registered links end their own way: EOF, cleanup, log line
        self.in_pool.join(timeout=STOP_GRACE_S)
        self.out_pool.join(timeout=STOP_GRACE_S)
        for pool in (self.in_pool, self.out_pool):
            pool.kill(timeout=STOP_GRACE_S)  # handshakes and dials in progress
        log.info("connections_closed", count=len(conns), result="ok")

    @property
    def listening(self):
        """The peer listener accepts connections (started, not yet closed at shutdown)."""
        return self._listener is not None and self._accepting is not None

    def wake(self):
        self._wake.set()

    # -- inbound ------------------------------------------------------------------------------
    def _accept_loop(self):
        while True:
            self.in_pool.wait_free()  # past the bound, connects wait in the kernel's backlog
            try:
                sock, addr = self._listener.accept()
            except OSError as e:
                log.warning("accept_failed", why=str(e), result="retry")
                gevent.sleep(ACCEPT_RETRY_S)
                continue
            self.in_pool.spawn(self._accept, sock, addr)

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
            if self.gate is not None:
                sock = self.gate.wrap(sock, server_side=True, ip=ip)
                if sock is None:
                    return
            Conn(self.hub, sock, ip, outbound=False, zero_copy=self.gate is None).run()
        finally:
            left = self.inbound_by_ip.pop(ip) - 1
            if left:
                self.inbound_by_ip[ip] = left

    # -- outbound -----------------------------------------------------------------------------
    def _dial_loop(self):
        while True:
            self._wake.wait(until_tick(DIAL_INTERVAL_S))
            self._wake.clear()
            now = time.monotonic()
            for entry in self.state.dial_candidates(now, self._dial_budget(now)):
                entry.dial_started()
                self.out_pool.spawn(self._dial, entry)

    def _dial_budget(self, now):
        """How many dials to start now. An incomplete node keeps FEW_OUTBOUND links while pieces
        arrive, and opens up to MAX_OUTBOUND once it starves: the pieces it lacks may be on peers
        it has no link to (many sources), or its peers may be slow or gone.
        A complete node needs nothing: its dials only offer pieces, to peers that might not find
        it themselves, and only once it is quiet (it sent no piece for QUIET_TICKS intervals) or
        nobody has found it yet: while peers fetch from it, the swarm has found it. Until an
        offer proves needed (the link moved pieces), it makes one per interval, OFFERS_AT_ONCE
        at most, so that finished nodes do not all sweep each other at the end of a sync
        (docs/tuning.md)."""
        free = self.out_pool.free_count()
        still = self._still_ticks(now)
        if not self.state.complete:
            if still >= STARVED_TICKS:
                return free
            return max(0, FEW_OUTBOUND - (MAX_OUTBOUND - free))
        if still < QUIET_TICKS and not self._unfound():
            return 0
        if self.offers_needed:
            return free
        if MAX_OUTBOUND - free >= OFFERS_AT_ONCE or now < self._next_offer:
            return 0
        self._next_offer = now + DIAL_INTERVAL_S
        return 1

    def _unfound(self):
        """No link, and no piece moved either way since start: nobody has found this node (a
        seeder that no peer picked from its Peers list). Finished nodes moved pieces: they wait."""
        s = self.state
        return not s.conns and not s.counters["bytes_out"] and not s.counters["bytes_in"]

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
        offer = self.state.complete
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if self.config.bind != "0.0.0.0":
                sock.bind((self.config.bind, 0))
            sock.settimeout(OFFER_CONNECT_TIMEOUT_S if offer else CONNECT_TIMEOUT_S)
            sock.connect(entry.addr)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            sock.close()
            entry.failed(time.monotonic(), self._offer_retry_s() if offer else None)
            log.debug("dial_failed", peer=entry.addr[0], why=str(e), fails=entry.fails, result="retry_later")
            return
        entry.dial_connected()
        if self.gate is not None:
            sock = self.gate.wrap(sock, server_side=False, ip=entry.addr[0])
            if sock is None:
                entry.failed(time.monotonic())
                return
        conn = Conn(self.hub, sock, entry.addr[0], outbound=True, entry=entry, offer=offer,
                    zero_copy=self.gate is None)
        conn.run()
        if conn.session.peer_id is None and not entry.is_self:
            entry.failed(time.monotonic())  # no handshake: as good as a failed dial

    def _offer_retry_s(self):
        """When to offer again to an address that did not answer: every complete node that lists
        it offers, so each waits about (peers known) x OFFER_SPACING_S, at random, and the swarm
        as a whole tries it every OFFER_SPACING_S or so. With BACKOFF_MAX_S and CONNECT_TIMEOUT_S,
        dials to a container not started yet waited in the kernel, and the last container of 60
        met 5-18 of them the moment it came up, while it checked its file (docs/tuning.md)."""
        return OFFER_SPACING_S * max(1, len(self.state.peers)) * self.state.rng.uniform(0.5, 1.5)

    # -- the connection table -----------------------------------------------------------------
    def admit(self, conn):
        """A handshake finished: None to admit the link, or the Reason to refuse it."""
        s, peer_id = self.state, conn.session.peer_id
        if peer_id == s.node_id:
            if conn.entry is not None:
                conn.entry.mark_self()
            log.debug("self_connection", addr=conn.ip, result="ignored")
            return Reason.SELF
        if max(self.banned.get(peer_id, 0), self.banned.get(conn.ip, 0)) > time.monotonic():
            return Reason.BANNED
        if conn.entry is None:
            if conn.session.listen_port == 0:  # a client (e.g. `node status`): served, not a peer
                conn.attach(PeerEntry((conn.ip, 0), Source.CLIENT))
                self.clients.add(conn)  # checked for stalls like a peer: it holds an inbound slot
                return None
            conn.attach(s.add_peer((conn.ip, conn.session.listen_port), Source.INBOUND))
        other = s.conns.get(peer_id)
        if other is not None:
            if self._dialer_id(conn) >= self._dialer_id(other):
                log.debug("duplicate_connection", peer=conn.name, result="dropped_new")
                return Reason.DUPLICATE
            other.close(Reason.DUPLICATE)
            self._forget(other)
        s.link_up(peer_id, conn)
        s.mark_verified(conn.entry)
        log.info("peer_connected", peer=conn.name, direction="out" if conn.outbound else "in",
                 conns=len(s.conns), result="ok")
        return None

    def _dialer_id(self, conn):
        # Both ends of a doubled link agree to keep the one opened by the smaller node id.
        return self.state.node_id if conn.outbound else conn.session.peer_id

    def leave(self, conn):
        """A link ended: what it means for its address, and the log line."""
        reason = conn.reason
        if reason.peer_fault:  # say so, even mid-handshake
            log.warning("peer_closed", peer=conn.name, why=conn.detail, result="protocol_error")
        self.clients.discard(conn)
        if not self._forget(conn):
            return
        if not reason.peer_fault:
            log.info("peer_closed", peer=conn.name, why=reason.value, result="closed")
        s = self.state
        complete = bool(s.info) and conn.session.peer_has & s.full == s.full
        benign = None if reason is Reason.SHUTDOWN else reason.benign
        conn.entry.link_down(conn, time.monotonic(), benign, conn.productive, complete)
        if conn.offer:
            self.offers_needed = conn.productive
        self.wake()

    def _forget(self, conn):
        return self.state.link_down(conn.session.peer_id, conn)

    def ban(self, conn):
        until = time.monotonic() + BAN_S
        self.state.count("bans")
        self.banned[conn.session.peer_id] = self.banned[conn.ip] = until  # by address too: ids are cheap
        if conn.entry is not None:
            conn.entry.ban_until(until)
        log.warning("peer_banned", peer=conn.name, secs=BAN_S, result="banned")

    def availability(self):
        """What each linked peer holds: the picker counts rarity from these."""
        return [c.session.peer_has for c in self.state.conns.values()]

    def kick_all(self):
        for c in list(self.state.conns.values()):
            c.kick()

    # -- housekeeping -------------------------------------------------------------------------
    def _housekeeping(self):
        while True:
            gevent.sleep(until_tick(HOUSEKEEPING_S))
            now = time.monotonic()
            for c in list(self.state.conns.values()) + list(self.clients):
                c.check(now)
