"""Peers by DNS name: `tasks.<service>` on Docker Swarm, a headless Service on Kubernetes.

Rule: a name is never fatal and never blocks the event loop. Each name has one greenlet that
resolves it at start and again every RESOLVE_EVERY_S (sooner after a failure), through gevent's
resolver: its default, the thread resolver, runs the C library's getaddrinfo in the hub's thread
pool, so /etc/hosts, the orchestrator's DNS server and search domains all work as for any program.
Every A record is a peer, added to the peer table with source "dns"; the node's own addresses
are skipped. A name that resolves to many addresses puts a random sample of them in the peer
table (DNS_SAMPLE): peer exchange spreads the rest, and each new answer tops the sample up as
addresses fail. What changed is logged once: a new set of addresses, or a new error.
"""

import random

import gevent
from gevent import socket

from . import log
from .discovery import local_networks
from .state import Source

RESOLVE_EVERY_S = 5.0  # a replica that starts later is in DNS once healthy: found within this
RETRY_FIRST_S = 0.5  # after a failure or an empty answer: a swarm that starts fills DNS in seconds
RETRY_MAX_S = RESOLVE_EVERY_S  # the retry backs off to the normal period, never beyond
RESOLVE_TIMEOUT_S = 2.0  # a cluster's DNS answers in milliseconds. A name it has no record for
#                          (no task healthy yet) may get no answer at all: Docker's DNS on an
#                          internal network forwards it to nobody, and glibc waits 5 s per try.
#                          Waited longer, it would hold back the retries; the lookup runs on, and
#                          the next refresh waits for that same lookup (one thread per name).
DNS_SAMPLE = 32  # addresses of one name in the peer table at once: 4x the outbound links, and
#                  the dialer shuffles them; a full table of 1000 tasks would cost a neighbour
#                  (ARP) entry per dial to addresses peer exchange would have offered anyway
FAILS_STALE = 2  # an address whose dials failed this often in a row no longer fills the sample


def resolve_host(name, port):
    """Every IPv4 address NAME resolves to, in the answer's order, without duplicates.
    gevent's socket module: cooperative whether or not the process is monkey-patched."""
    infos = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def sample_new(answer, skip, kept, limit, rng):
    """Addresses of `answer` to add to the peer table now: none in `skip` (our own, or already
    known), a random sample that brings the `kept` still-working ones up to `limit`."""
    fresh = sorted(set(answer) - set(skip))
    return rng.sample(fresh, min(max(0, limit - kept), len(fresh)))


def own_addresses(bind_ip):
    """The IPv4 addresses this node is reachable at: a name's records for them are ourselves."""
    if bind_ip != "0.0.0.0":
        return {bind_ip}
    return {str(iface.ip) for iface in local_networks(bind_ip)}


class Names:
    """One resolving greenlet per configured (name, port)."""

    def __init__(self, node, resolve=None, rng=None):
        self.node = node
        self.state = node.state
        self.resolve = resolve or resolve_host
        self.rng = rng or random.Random()
        self.own = own_addresses(node.config.bind)
        self.last = {}  # (name, port) -> what was last logged for it: a set of addresses or an error
        self._pending = {}  # (name, port) -> lookup greenlet still running past its timeout
        self._loops = []

    def start(self):
        for name, port in self.node.config.peer_names:
            g = gevent.spawn(self._loop, name, port)
            g.link_exception(self.node.crash)
            self._loops.append(g)
        log.info("dns_peers", names=",".join(f"{n}:{p}" for n, p in self.node.config.peer_names),
                 every_s=RESOLVE_EVERY_S, result="started")

    def stop(self):
        for g in self._loops + list(self._pending.values()):
            g.kill(block=False)

    def _loop(self, name, port):
        retry = RETRY_FIRST_S
        while True:
            if self.refresh(name, port):
                retry = RETRY_FIRST_S
                gevent.sleep(RESOLVE_EVERY_S)
            else:
                gevent.sleep(retry)
                retry = min(RETRY_MAX_S, retry * 2)

    def refresh(self, name, port):
        """Resolve NAME once and add what is new. True when it gave a peer that still works."""
        answer = self._lookup(name, port)
        if isinstance(answer, OSError):  # socket.gaierror included: NXDOMAIN, no server, timeout
            self._report(name, port, why=str(answer))
            return False
        answer = [ip for ip in answer if ip not in self.own]
        added = self._add(answer, port)
        self._report(name, port, answer=answer, added=len(added))
        return any(self._working(self.state.peers.get((ip, port))) for ip in answer)

    def _lookup(self, name, port):
        """The answer (a list of IPs) or the OSError, within RESOLVE_TIMEOUT_S. A lookup that takes
        longer is left running, and the next call for the name waits for it rather than start
        another: the thread resolver cannot cancel a lookup, and each one holds a thread."""
        g = self._pending.pop((name, port), None)
        if g is None:  # (a Greenlet that has finished is falsy: never `or` it)
            g = gevent.spawn(self._resolve_or_error, name, port)
        g.join(RESOLVE_TIMEOUT_S)
        if not g.ready():
            self._pending[(name, port)] = g
            return OSError("timed out")
        return g.value

    def _resolve_or_error(self, name, port):
        try:
            return self.resolve(name, port)
        except OSError as e:
            return e

    def _add(self, answer, port):
        peers = self.state.peers
        known = [ip for ip in answer if (ip, port) in peers]
        kept = sum(1 for ip in known if self._working(peers[(ip, port)]))
        added = sample_new(answer, known, kept, DNS_SAMPLE, self.rng)
        for ip in added:
            self.state.add_peer((ip, port), Source.DNS)
        return added

    @staticmethod
    def _working(entry):
        return entry is not None and not entry.is_self and entry.fails < FAILS_STALE

    def _report(self, name, port, answer=None, added=0, why=None):
        """One line per change of outcome: not one a period for a name that stays unresolvable."""
        outcome = why if why is not None else frozenset(answer)
        if self.last.get((name, port)) == outcome:
            return
        self.last[(name, port)] = outcome
        if why is not None:
            log.warning("dns_resolve", name=name, why=why, result="failed", action="retrying")
        elif not answer:
            log.info("dns_resolve", name=name, addrs=0, result="empty")
        else:
            log.info("dns_resolve", name=name, addrs=len(answer), added=added, result="ok")
