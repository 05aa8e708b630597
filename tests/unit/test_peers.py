"""peers.Swarm's dial budget: an incomplete node keeps few links while pieces arrive and opens
all its outbound slots once it starves; a complete node only offers pieces, slowly, until an
offer turns out to be needed."""

import hashlib
from types import SimpleNamespace

import gevent

from node.config import FileInfo
from node.peers import DIAL_INTERVAL_S, FEW_OUTBOUND, MAX_OUTBOUND, OFFERS_AT_ONCE, STARVED_TICKS, Swarm
from node.state import NodeState


def make_swarm(complete):
    info = FileInfo(256, 16, tuple(hashlib.sha1(b"%d" % i).digest() for i in range(16)))
    st = NodeState(b"\x01" * 8, info)
    st.mark_checked(0, 16, 0xFFFF if complete else 0)
    return Swarm(SimpleNamespace(state=st))


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


def test_complete_node_offers_one_dial_per_interval():
    sw = make_swarm(complete=True)
    assert sw._dial_budget(10.0) == 1
    assert sw._dial_budget(10.0) == 0
    assert sw._dial_budget(10.0 + DIAL_INTERVAL_S / 2) == 0
    assert sw._dial_budget(10.0 + DIAL_INTERVAL_S) == 1


def test_complete_node_keeps_few_offers_in_flight():
    sw = make_swarm(complete=True)
    for _ in range(OFFERS_AT_ONCE):
        sw.out_pool.spawn(gevent.sleep, 1)
    assert sw._dial_budget(100.0) == 0
    sw.out_pool.kill()


def test_a_needed_offer_restores_the_full_budget():
    sw = make_swarm(complete=True)
    sw.offers_needed = True
    assert sw._dial_budget(0.0) == MAX_OUTBOUND
