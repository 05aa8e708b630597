"""peers.Swarm's dial budget: an incomplete node keeps few links while pieces arrive and opens
all its outbound slots once it starves; a complete node offers pieces only once nobody fetches
from it, and then slowly, until an offer turns out to be needed."""

import hashlib
import socket
import time

import gevent

from node.config import FileInfo
from node.peers import (CONNECT_TIMEOUT_S, DIAL_INTERVAL_S, FEW_OUTBOUND, MAX_OUTBOUND, OFFER_CONNECT_TIMEOUT_S,
                        OFFER_SPACING_S, OFFERS_AT_ONCE, QUIET_TICKS, STARVED_TICKS, Swarm)
from node.state import BACKOFF_MAX_S, NodeState, PeerEntry, Source


class FakeLink:
    """A link as NodeState keeps it (only its entry is told)."""

    def __init__(self, addr):
        self.entry = PeerEntry(addr, Source.CONF)


def make_swarm(complete, linked=True):
    info = FileInfo(256, 16, tuple(hashlib.sha1(b"%d" % i).digest() for i in range(16)))
    st = NodeState(b"\x01" * 8, info)
    st.mark_checked(0, 16, 0xFFFF if complete else 0)
    if linked:
        st.link_up(b"\x02" * 8, FakeLink(("10.0.0.2", 6881)))
    return Swarm(st, config=None, crash=None)


def test_incomplete_node_keeps_few_links_while_pieces_arrive():
    sw = make_swarm(complete=False)
    assert sw._dial_budget(0.0) == FEW_OUTBOUND
    for _ in range(FEW_OUTBOUND - 1):
        sw.out_pool.spawn(gevent.sleep, 1)
    assert sw._dial_budget(0.0) == 1
    for tick in range(1, 4 * STARVED_TICKS):  # a new piece every interval: never starved
        sw.state.mark_have(1 << tick)
        assert sw._dial_budget(tick * DIAL_INTERVAL_S) == 1
    sw.out_pool.kill()


def test_starved_node_opens_every_slot_until_a_piece_arrives():
    sw = make_swarm(complete=False)
    t = 0.0
    for _ in range(STARVED_TICKS):
        assert sw._dial_budget(t) == FEW_OUTBOUND
        t += DIAL_INTERVAL_S
    assert sw._dial_budget(t) == MAX_OUTBOUND
    assert sw._dial_budget(t + DIAL_INTERVAL_S / 4) == MAX_OUTBOUND  # wakes between ticks
    sw.state.mark_have(0b1)
    assert sw._dial_budget(t + DIAL_INTERVAL_S) == FEW_OUTBOUND


def test_time_the_dialer_did_not_see_is_no_starvation():
    sw = make_swarm(complete=False)
    assert sw._dial_budget(0.0) == FEW_OUTBOUND
    assert sw._dial_budget(30.0) == FEW_OUTBOUND  # e.g. the process was stopped (SIGSTOP)


def quiet(sw, t=10.0):
    """Let the dialer see QUIET_TICKS intervals without a piece sent; returns the time after."""
    for _ in range(QUIET_TICKS):
        assert sw._dial_budget(t) == 0
        t += DIAL_INTERVAL_S
    return t


def test_complete_node_offers_only_once_nobody_fetches_from_it():
    sw = make_swarm(complete=True)
    t = 10.0
    for _ in range(4 * QUIET_TICKS):  # a piece sent every interval: peers have found it
        sw.state.count("bytes_out", 16)
        assert sw._dial_budget(t) == 0
        t += DIAL_INTERVAL_S
    last_sent = t - DIAL_INTERVAL_S
    for k in range(1, QUIET_TICKS):
        assert sw._dial_budget(last_sent + k * DIAL_INTERVAL_S) == 0
    assert sw._dial_budget(last_sent + QUIET_TICKS * DIAL_INTERVAL_S) == 1


def test_complete_node_without_any_link_offers_at_once():
    """A seeder that nobody dialled (each peer picked others from a long Peers list) and that has
    moved no piece would else wait QUIET_TICKS intervals while the whole swarm starves."""
    sw = make_swarm(complete=True, linked=False)
    assert sw._dial_budget(10.0) == 1
    assert sw._dial_budget(10.0) == 0  # and then one per interval, as any offer


def test_a_finished_node_whose_links_ended_waits_to_offer():
    """At the end of a sync every finished node is left without links: offering at once then
    is the sweep QUIET_TICKS exists to prevent (S3 +19%, S4 +7.5% when it did)."""
    sw = make_swarm(complete=True, linked=False)
    sw.state.count("bytes_in", 16)
    assert sw._dial_budget(10.0) == 0


def test_complete_node_offers_one_dial_per_interval():
    sw = make_swarm(complete=True)
    t = quiet(sw)
    assert sw._dial_budget(t) == 1
    assert sw._dial_budget(t) == 0
    assert sw._dial_budget(t + DIAL_INTERVAL_S / 2) == 0
    assert sw._dial_budget(t + DIAL_INTERVAL_S) == 1


def test_complete_node_keeps_few_offers_in_flight():
    sw = make_swarm(complete=True)
    t = quiet(sw)
    for _ in range(OFFERS_AT_ONCE):
        sw.out_pool.spawn(gevent.sleep, 1)
    assert sw._dial_budget(t) == 0
    sw.out_pool.kill()


def test_a_needed_offer_restores_the_full_budget():
    sw = make_swarm(complete=True)
    sw.offers_needed = True
    t = quiet(sw)
    assert sw._dial_budget(t) == MAX_OUTBOUND
    sw.state.count("bytes_out", 16)  # serving again: no offers meanwhile
    assert sw._dial_budget(t + DIAL_INTERVAL_S) == 0


class LoopbackConfig:
    bind = "127.0.0.1"


def wait_after_a_refused_dial(complete, listed):
    """A node that lists `listed` other addresses dials one where nobody listens: seconds until
    it may dial that address again."""
    sw = make_swarm(complete)
    sw.config = LoopbackConfig()
    for i in range(listed - 1):
        sw.state.add_peer((f"10.0.1.{i}", 6881), Source.CONF)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: the dial is refused at once
    entry = sw.state.add_peer(("127.0.0.1", port), Source.CONF)
    before = time.monotonic()
    sw._dial(entry)
    assert entry.fails == 1
    return entry.next_try - before


def test_an_offer_nobody_answered_is_retried_by_the_swarm_not_by_every_complete_node():
    """Containers started one by one: every complete node of 60 listing the last one retried its
    address every few seconds, so it met 5-18 queued offers the moment it came up. Each now waits
    about (addresses it knows) x OFFER_SPACING_S; a fetching node still retries within seconds."""
    listed = 60
    known = listed + 1  # make_swarm's linked peer
    wait = wait_after_a_refused_dial(complete=True, listed=listed)
    assert 0.5 * known * OFFER_SPACING_S <= wait <= 1.5 * known * OFFER_SPACING_S + 1.0
    assert wait_after_a_refused_dial(complete=False, listed=listed) <= BACKOFF_MAX_S


def test_an_offer_gives_up_on_an_address_that_does_not_answer_at_once():
    """A dial to a container not started yet hangs until its timeout, and its SYN waits in the
    kernel: every such offer reached the container the moment it came up. A listener whose accept
    queue is full drops SYNs the same way, on loopback."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    addr = listener.getsockname()
    queued = [socket.create_connection(addr, timeout=1)]  # never accepted: a queue of one is full
    sw = make_swarm(complete=True)
    sw.config = LoopbackConfig()
    entry = sw.state.add_peer(addr, Source.CONF)
    try:
        before = time.monotonic()
        sw._dial(entry)
        took = time.monotonic() - before
    finally:
        for s in queued + [listener]:
            s.close()
    assert entry.fails == 1
    assert OFFER_CONNECT_TIMEOUT_S <= took < CONNECT_TIMEOUT_S / 2
