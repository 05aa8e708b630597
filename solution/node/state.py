"""What one node knows: the file's metadata, which pieces it holds, which are requested, its peers
and its open links.

Rule: other modules read these fields freely but change them only through the methods here, so
there is one place that keeps the bitsets consistent and tells subscribers what changed
(tests/unit/test_ownership.py checks that no module assigns another's attributes).
Piece sets are ints used as bitsets (bit i = piece i), with `picker`'s helpers (a pure leaf).
A process runs one NodeState per node (tests run several nodes in one process).
"""

import enum
import random
import time

from . import log
from .picker import span_bits

BACKOFF_FIRST_S = 0.5  # a peer that is restarting is usually back within a second
BACKOFF_MAX_S = 4.0  # restarts are frequent: never wait long to retry a known address
USELESS_RETRY_S = 3.0  # after closing a link with nothing to exchange, wait before redialling


class Change(enum.Enum):
    """What changed, as told to subscribers."""
    HAVE = "have"  # new pieces held
    REQUESTABLE = "requestable"  # pieces became fetchable (scanned missing, or released)
    PEERS = "peers"  # an address to dial appeared or became worth retrying
    META = "meta"  # the file's metadata became known
    COMPLETE = "complete"


class Source(enum.Enum):
    """Where we learned a peer's address."""
    CONF = "conf"
    SAVED = "saved"  # the state file of an earlier run
    INBOUND = "inbound"  # it dialled us
    PEX = "pex"  # a peer told us (PEERS)
    DISCOVERY = "discovery"  # we heard its beacon
    CLIENT = "client"  # a status client, not a peer
    DNS = "dns"  # a name in Peers or --peers-dns resolved to it (maybe not running yet)

    @property
    def alive(self):
        """Evidence that a node listens there now: heard from, or a peer talked to it."""
        return self in (Source.INBOUND, Source.PEX, Source.DISCOVERY)


class PeerEntry:
    """One address we may dial. `conn` is the live connection to it, if any."""

    __slots__ = ("addr", "source", "verified", "alive", "fails", "next_try", "complete", "is_self",
                 "conn", "dialing")

    def __init__(self, addr, source):
        self.addr = addr
        self.source = source  # a Source
        self.verified = False  # a handshake with it has succeeded at least once
        self.alive = source.alive  # evidence that a node listens there (see dial order)
        self.fails = 0
        self.next_try = 0.0
        self.complete = False  # held every piece when we last talked
        self.is_self = False
        self.conn = None
        self.dialing = False

    def failed(self, now, wait=None):
        """A dial or handshake failed: back off, or wait `wait` seconds if the caller knows better."""
        self.dialing = False
        self.fails += 1
        if wait is None:
            wait = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** min(self.fails - 1, 16))
        self.next_try = now + wait

    def heard(self):
        self.alive = True

    def handshaken(self):
        self.verified = True

    def retry_now(self, restarted):
        self.fails, self.next_try = 0, 0.0
        if restarted:
            self.complete = False  # it may have lost pieces since we saw it complete

    def dial_started(self):
        self.dialing = True

    def dial_connected(self):
        self.dialing = False

    def mark_self(self):
        self.is_self = True

    def ban_until(self, until):
        self.next_try = max(self.next_try, until)

    def link_up(self, conn):
        self.conn = conn

    def link_down(self, conn, now, benign, productive, complete):
        """The link to this address ended. Benign ends wait USELESS_RETRY_S; errors back off,
        even after a good handshake (never a tight loop); a shutdown says nothing of the peer."""
        if self.conn is conn:
            self.conn = None
        self.complete = complete
        if benign:
            self.fails = 0
            self.next_try = max(self.next_try, now + USELESS_RETRY_S)
        elif benign is not None:
            if productive:
                self.fails = 0
            self.failed(now)

    def __repr__(self):
        return f"PeerEntry({self.addr[0]}:{self.addr[1]} {self.source.value})"


class NodeState:
    def __init__(self, node_id, info=None):
        self.node_id = node_id
        self.info = None
        self.full = self.have = self.missing = self.requested = 0
        self.requested_twice = 0  # endgame: pieces with a second request out; never a third
        self.have_count = 0
        self.complete = False  # every piece held (a field, not a property: every HAVE reads it)
        self.peers = {}  # (ip, port) -> PeerEntry
        self.conns = {}  # peer node_id -> connection
        self.verified = []  # PeerEntry, in the order their first handshake succeeded
        self.counters = dict(bytes_in=0, bytes_out=0, pieces_in=0, pieces_bad=0, dup_pieces=0,
                             requests_sent=0, bans=0, dials=0)
        self.rates = {"in": 0.0, "out": 0.0}  # bytes/s over the last progress interval
        self.started = time.monotonic()
        self.completed_at = None
        self.rng = random.Random()
        self._subscribers = []
        if info is not None:
            self.set_info(info)

    # -- subscriptions: connections and the dialer react to changes ---------------------------
    def subscribe(self, fn):
        """fn(change) is called after each change, with a Change."""
        self._subscribers.append(fn)

    def _notify(self, what):
        for fn in list(self._subscribers):
            fn(what)

    # -- file and pieces ----------------------------------------------------------------------
    def set_info(self, info):
        self.info = info
        self.full = (1 << info.n_pieces) - 1
        self.complete = self.have == self.full
        self._notify(Change.META)

    def mark_checked(self, first, count, good):
        """Scan result for pieces first..first+count-1: `good` (bitset) verified, the rest missing."""
        span = span_bits(first, count)
        good &= span & ~self.have
        self.have |= good
        self.missing |= span & ~self.have
        self.have_count = self.have.bit_count()
        self.complete = self.have == self.full
        self._notify(Change.REQUESTABLE)
        if good:
            self._on_new_pieces()

    def scan_finished(self):
        if self.complete and self.completed_at is None:  # a 0-byte file: no piece was marked
            self._on_new_pieces()

    def mark_have(self, good):
        """Pieces (bitset) fetched and verified."""
        good &= ~self.have
        self.requested &= ~good
        self.requested_twice &= ~good
        if not good:
            return
        self.have |= good
        self.missing &= ~good
        self.have_count = self.have.bit_count()
        self.complete = self.have == self.full
        self._on_new_pieces()

    def _on_new_pieces(self):
        if self.complete and self.completed_at is None:
            self.completed_at = time.monotonic()
            self._notify(Change.HAVE)
            self._notify(Change.COMPLETE)
        else:
            self._notify(Change.HAVE)

    def mark_requested(self, bits):
        self.requested_twice |= bits & self.requested
        self.requested |= bits

    def release(self, bits):
        """Requests that ended without the piece (peer gone, rejected, bad data): fetchable again
        once no other request for it is out."""
        twice = bits & self.requested_twice
        self.requested_twice &= ~twice
        once = bits & ~twice & self.requested
        if once:
            self.requested &= ~once
            self._notify(Change.REQUESTABLE)

    def has_all(self, first, count):
        span = span_bits(first, count)
        return self.have & span == span

    # -- peers --------------------------------------------------------------------------------
    def add_peer(self, addr, source):
        """Remember an address; returns its entry. Tells subscribers when it is new."""
        entry = self.peers.get(addr)
        if entry is None:
            entry = self.peers[addr] = PeerEntry(addr, source)
            log.debug("peer_learned", peer=f"{addr[0]}:{addr[1]}", source=source.value)
            self._notify(Change.PEERS)
        elif source.alive:
            entry.heard()
        return entry

    def dial_candidates(self, now, limit):
        """Entries worth dialling now: fewest failures first, then those known to be alive (heard,
        or exchanged by a peer, or handshaken with), in random order among equals.
        Every node of a swarm usually has the same Peers list: dialled in list order, the first 8
        hosts would get every node's dials (and refuse most) while the rest waited for a dial.
        Alive ones first, as a dial to a host that is not up yet costs more than its 2 s: each new
        address takes a neighbour (ARP) entry, in a table that all containers on a host share.
        A complete node only dials to offer pieces, and only to addresses nobody vouched for: a
        node that a peer exchanged, that dialled us, that we heard or talked to has links or
        finds them itself. Offering to every address (each finished node dialling all the others
        once) overflowed that shared table in 60-container swarms, and then every new connect
        on the host timed out for seconds."""
        if limit <= 0:
            return []
        out = [e for e in self.peers.values()
               if e.conn is None and not e.dialing and not e.is_self and e.next_try <= now
               and not (self.complete and (e.complete or e.alive or e.verified))]
        self.rng.shuffle(out)  # then a stable sort: the shuffle breaks its ties
        out.sort(key=lambda e: (e.fails, not (e.alive or e.verified), e.next_try))
        return out[:limit]

    def retry_now(self, entry, restarted=False):
        """The address was just heard from, so it is alive: forget its backoff. A restarted peer
        may also have lost pieces since we last saw it complete."""
        if entry.fails or entry.next_try or restarted:
            entry.retry_now(restarted)
            self._notify(Change.PEERS)

    def mark_verified(self, entry):
        if not entry.verified:
            entry.handshaken()
            self.verified.append(entry)
            self._notify(Change.PEERS)

    @property
    def verified_version(self):
        """How far the verified list goes: a link shares what came after the version it saw."""
        return len(self.verified)

    def verified_addrs(self, since=0):
        """Addresses that took a handshake, from version `since` on (entries are never dropped)."""
        return [e.addr for e in self.verified[since:] if not e.is_self]

    # -- links --------------------------------------------------------------------------------
    def link_up(self, peer_id, conn):
        self.conns[peer_id] = conn
        conn.entry.link_up(conn)

    def link_down(self, peer_id, conn):
        """Forget the link if it is the one we hold for that peer; returns whether it was."""
        if self.conns.get(peer_id) is not conn:
            return False
        del self.conns[peer_id]
        return True

    # -- counters -----------------------------------------------------------------------------
    def count(self, key, n=1):
        self.counters[key] += n

    def set_rates(self, rate_in, rate_out):
        self.rates = {"in": rate_in, "out": rate_out}
