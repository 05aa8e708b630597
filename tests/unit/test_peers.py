"""peers.Swarm's dial budget: an incomplete node fills its outbound slots; a complete node only
offers pieces, slowly, until an offer turns out to be needed."""

import hashlib
from types import SimpleNamespace

from node.config import FileInfo
from node.peers import DIAL_INTERVAL_S, MAX_OUTBOUND, OFFERS_AT_ONCE, Swarm
from node.state import NodeState


def make_swarm(complete):
    info = FileInfo(64, 16, tuple(hashlib.sha1(b"%d" % i).digest() for i in range(4)))
    st = NodeState(b"\x01" * 8, info)
    st.mark_checked(0, 4, 0b1111 if complete else 0)
    return Swarm(SimpleNamespace(state=st))


def test_incomplete_node_dials_into_every_free_slot():
    sw = make_swarm(complete=False)
    assert sw._dial_budget(0.0) == MAX_OUTBOUND
    assert sw._dial_budget(0.0) == MAX_OUTBOUND


def test_complete_node_offers_one_dial_per_interval():
    sw = make_swarm(complete=True)
    assert sw._dial_budget(10.0) == 1
    assert sw._dial_budget(10.0) == 0
    assert sw._dial_budget(10.0 + DIAL_INTERVAL_S / 2) == 0
    assert sw._dial_budget(10.0 + DIAL_INTERVAL_S) == 1


def test_complete_node_keeps_few_offers_in_flight():
    sw = make_swarm(complete=True)
    for _ in range(OFFERS_AT_ONCE):
        sw.out_pool.spawn(lambda: __import__("gevent").sleep(1))
    assert sw._dial_budget(100.0) == 0
    sw.out_pool.kill()


def test_a_needed_offer_restores_the_full_budget():
    sw = make_swarm(complete=True)
    sw.offers_needed = True
    assert sw._dial_budget(0.0) == MAX_OUTBOUND
