"""hub: a peer's HAVE wakes its link only when it gives us something to ask that peer for now (what
picker.fetchable allows, endgame included), or when both sides are complete."""

import hashlib
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from node import picker
from node.config import FileInfo
from node.hub import Hub
from node.state import NodeState

N = 20  # more than picker.ENDGAME_MAX_PIECES, so both the endgame and the rest are reached
ALL = (1 << N) - 1


def state_with(have, requested, twice):
    s = NodeState(b"\x01" * 8, FileInfo(N * 16, 16, tuple(hashlib.sha1(b"%d" % i).digest() for i in range(N))))
    s.mark_checked(0, N, have)
    s.mark_requested(requested & ~have)
    s.mark_requested(twice & requested & ~have)  # asked of a second peer too
    return s


def expected(s, session, span):
    if s.complete:
        return session.peer_has & s.full == s.full
    return bool(picker.fetchable(s.missing, s.requested, session.peer_has, session.mine_bits,
                                 s.requested_twice) & span)


@settings(max_examples=2000)
@given(have=st.integers(0, ALL), requested=st.integers(0, ALL), twice=st.integers(0, ALL),
       mine=st.integers(0, ALL), peer_had=st.integers(0, ALL), first=st.integers(0, N - 1),
       count=st.integers(1, N))
def test_news_is_what_the_picker_could_ask_for(have, requested, twice, mine, peer_had, first, count):
    count = min(count, N - first)
    s = state_with(have, requested, twice)
    span = picker.span_bits(first, count)
    session = SimpleNamespace(peer_has=peer_had | span, mine_bits=mine & s.requested)
    hub = Hub(s, swarm=None, port=0, on_meta=None)
    assert hub.news(session, span) == expected(s, session, span)


def test_news_of_a_piece_we_hold_wakes_nobody_until_both_are_complete():
    s = state_with(have=ALL & ~1, requested=0, twice=0)
    hub = Hub(s, swarm=None, port=0, on_meta=None)
    peer = SimpleNamespace(peer_has=0b10, mine_bits=0)
    assert not hub.news(peer, 0b10)
    s.mark_have(1)
    assert s.complete
    assert not hub.news(peer, 0b10)  # we are complete, it is not: nothing to do on its HAVE
    peer.peer_has = ALL
    assert hub.news(peer, 1 << (N - 1))  # both complete now: the link may close
