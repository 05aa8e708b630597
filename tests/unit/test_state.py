"""state: the piece bitsets (have / missing / requested) change only through NodeState's methods,
which keep them consistent and tell subscribers what changed; the peer table's dial candidates and
each PeerEntry's capped exponential backoff."""

import hashlib

import pytest

from node.config import FileInfo
from node.state import BACKOFF_FIRST_S, BACKOFF_MAX_S, Change, NodeState, PeerEntry, Source

N = 8


def make_info(n=N, piece_size=16):
    size = n * piece_size - 3 if n else 0
    return FileInfo(size, piece_size, tuple(hashlib.sha1(b"%d" % i).digest() for i in range(n)))


def bits(*idx):
    return sum(1 << i for i in set(idx))


ALL = (1 << N) - 1


@pytest.fixture
def node():
    """A NodeState with a file of N pieces and a list recording every notification."""
    s = NodeState(b"\x01" * 8, make_info())
    s.events = []
    s.subscribe(lambda change: s.events.append(change.value))
    return s


def assert_consistent(s):
    assert s.have & s.missing == 0
    assert s.have & s.requested == 0
    assert s.have_count == s.have.bit_count()
    assert (s.have | s.missing) & ~s.full == 0


# -- file and pieces ------------------------------------------------------------------------------

def test_new_state_knows_nothing_yet():
    s = NodeState(b"id", None)
    assert s.info is None and not s.complete
    assert (s.have, s.missing, s.requested, s.have_count) == (0, 0, 0, 0)


def test_set_info_notifies_meta():
    s = NodeState(b"id")
    seen = []
    s.subscribe(seen.append)
    s.set_info(make_info())
    assert seen == [Change.META]
    assert s.full == ALL and not s.complete


def test_mark_checked_splits_have_and_missing(node):
    node.mark_checked(0, N, bits(0, 3, 7))
    assert node.have == bits(0, 3, 7)
    assert node.missing == ALL & ~bits(0, 3, 7)
    assert node.have_count == 3
    assert node.events == ["requestable", "have"]
    assert not node.complete and node.completed_at is None
    assert_consistent(node)


def test_mark_checked_with_nothing_good_only_makes_pieces_requestable(node):
    node.mark_checked(0, N, 0)
    assert node.have == 0 and node.missing == ALL
    assert node.events == ["requestable"]


def test_mark_checked_ignores_good_bits_outside_its_batch(node):
    node.mark_checked(0, 4, bits(1, 6))  # 6 is not in this batch
    assert node.have == bits(1)
    assert node.missing == bits(0, 2, 3)


def test_mark_checked_in_batches(node):
    node.mark_checked(0, 3, bits(0, 2))
    node.mark_checked(3, 3, bits(4))
    assert node.missing == bits(1, 3, 5)  # pieces 6, 7 not scanned yet: neither held nor missing
    node.mark_checked(6, 2, bits(6, 7))
    assert node.have == bits(0, 2, 4, 6, 7)
    assert node.missing == bits(1, 3, 5)
    assert_consistent(node)


def test_mark_checked_keeps_pieces_fetched_meanwhile(node):
    node.mark_have(bits(5))  # fetched before the scan reached it
    node.mark_checked(4, 4, 0)
    assert node.have == bits(5)
    assert node.missing == bits(4, 6, 7)
    assert_consistent(node)


def test_complete_file_on_disk_completes_at_scan(node):
    node.mark_checked(0, N, ALL)
    assert node.complete
    assert node.completed_at is not None
    assert node.events == ["requestable", "have", "complete"]


def test_mark_have_clears_missing_and_requested(node):
    node.mark_checked(0, N, 0)
    node.mark_requested(bits(1, 2, 3))
    node.events.clear()
    node.mark_have(bits(1, 2))
    assert node.have == bits(1, 2)
    assert node.missing == ALL & ~bits(1, 2)
    assert node.requested == bits(3)
    assert node.have_count == 2
    assert node.events == ["have"]
    assert_consistent(node)


def test_mark_have_of_held_pieces_is_silent(node):
    node.mark_checked(0, N, bits(1))
    node.mark_requested(bits(2))
    node.mark_have(bits(2))
    node.events.clear()
    node.mark_have(bits(1, 2))  # endgame duplicates arriving late
    assert node.events == []
    assert node.have == bits(1, 2) and node.have_count == 2
    assert node.requested == 0
    assert_consistent(node)


def test_completion_is_recorded_and_announced_once(node):
    node.mark_checked(0, N, 0)
    node.mark_requested(ALL)
    node.events.clear()
    node.mark_have(ALL & ~bits(7))
    assert not node.complete and node.completed_at is None
    assert node.events == ["have"]
    node.mark_have(bits(7))
    assert node.complete
    at = node.completed_at
    assert at is not None and at >= node.started
    assert node.events == ["have", "have", "complete"]
    assert node.requested == 0 and node.missing == 0
    node.mark_have(bits(7))  # a late duplicate
    assert node.completed_at == at
    assert node.events.count("complete") == 1


def test_release_notifies_only_when_something_was_requested(node):
    node.mark_checked(0, N, 0)
    node.events.clear()
    node.release(bits(2, 3))
    assert node.events == []
    node.mark_requested(bits(3, 4))
    node.release(bits(2, 3))
    assert node.requested == bits(4)
    assert node.events == ["requestable"]
    node.release(bits(3))
    assert node.events == ["requestable"]


def test_has_all(node):
    node.mark_checked(0, N, bits(2, 3, 4))
    assert node.has_all(2, 3)
    assert node.has_all(3, 1)
    assert not node.has_all(1, 2)
    assert not node.has_all(4, 2)
    assert node.has_all(5, 0)


def test_counters(node):
    node.count("bytes_in", 100)
    node.count("bytes_in", 20)
    node.count("pieces_bad")
    assert node.counters["bytes_in"] == 120 and node.counters["pieces_bad"] == 1


def test_several_subscribers_all_hear(node):
    other = []
    node.subscribe(other.append)
    node.mark_checked(0, N, bits(0))
    assert other == [Change.REQUESTABLE, Change.HAVE]
    assert node.events == ["requestable", "have"]


# -- peers ----------------------------------------------------------------------------------------

A, B, C, D, E, F = (("10.0.0.%d" % i, 6881) for i in range(2, 8))


def test_add_peer_is_idempotent_and_notifies_once(node):
    e1 = node.add_peer(A, Source.CONF)
    e2 = node.add_peer(A, Source.PEX)
    assert e1 is e2
    assert e1.source is Source.CONF  # the first source is kept
    assert node.events == ["peers"]
    assert list(node.peers) == [A]
    node.add_peer(B, Source.DISCOVERY)
    assert node.events == ["peers", "peers"]


def test_same_ip_other_port_is_another_peer(node):
    assert node.add_peer(("10.0.0.2", 6881), Source.CONF) is not node.add_peer(("10.0.0.2", 7000), Source.CONF)
    assert len(node.peers) == 2


def test_dial_candidates_skip_what_should_not_be_dialled(node):
    now = 100.0
    for addr in (A, B, C, D, E, F):
        node.add_peer(addr, Source.CONF)
    node.peers[A].conn = object()  # connected
    node.peers[B].dialing = True
    node.peers[C].is_self = True
    node.peers[D].next_try = now + 1  # backing off
    node.peers[E].complete = True  # a seeder, but we still need pieces: dial it
    got = node.dial_candidates(now, 10)
    assert sorted(e.addr for e in got) == [E, F]


def test_complete_peers_are_skipped_once_we_are_complete(node):
    node.add_peer(A, Source.CONF).complete = True
    node.add_peer(B, Source.CONF)
    assert sorted(e.addr for e in node.dial_candidates(0.0, 10)) == [A, B]
    node.mark_checked(0, N, ALL)
    assert [e.addr for e in node.dial_candidates(0.0, 10)] == [B]


def test_a_complete_node_offers_only_to_addresses_nobody_vouched_for(node):
    """Once complete, a node dials only to offer pieces: not to a node that has links of its
    own (a peer exchanged it), that dialled us, that we heard or handshook with."""
    for addr in (A, B, C, D):
        node.add_peer(addr, Source.CONF)
    node.add_peer(A, Source.PEX)
    node.add_peer(B, Source.INBOUND)
    node.peers[C].verified = True
    node.add_peer(E, Source.DISCOVERY)
    assert len(node.dial_candidates(0.0, 10)) == 5  # while fetching: all of them
    node.mark_checked(0, N, ALL)
    assert [e.addr for e in node.dial_candidates(0.0, 10)] == [D]


def test_backoff_entry_becomes_due(node):
    e = node.add_peer(A, Source.CONF)
    e.failed(now=50.0)
    assert node.dial_candidates(50.0, 10) == []
    assert node.dial_candidates(50.0 + BACKOFF_FIRST_S, 10) == [e]


def test_dial_candidates_order_by_failures_then_due_time(node):
    a, b, c, d = (node.add_peer(x, Source.CONF) for x in (A, B, C, D))
    a.fails, a.next_try = 2, 1.0
    b.fails, b.next_try = 0, 5.0
    c.fails, c.next_try = 1, 2.0
    d.fails, d.next_try = 0, 3.0
    assert node.dial_candidates(10.0, 10) == [d, b, c, a]
    assert node.dial_candidates(10.0, 2) == [d, b]
    assert node.dial_candidates(10.0, 0) == []
    assert node.dial_candidates(10.0, -1) == []


def test_addresses_known_to_be_alive_are_dialled_before_conf_ones(node):
    """A conf address may be a host that is not up yet; one a peer exchanged, one heard by
    discovery, or one handshaken with before is dialled first (among equal failures)."""
    conf = [node.add_peer((f"10.0.0.{i}", 6881), Source.CONF) for i in range(1, 21)]
    pex = node.add_peer(A, Source.PEX)
    heard = node.add_peer(conf[7].addr, Source.DISCOVERY)  # a conf address heard since
    conf[3].verified = True
    for _ in range(20):
        first3 = set(node.dial_candidates(0.0, 3))
        assert first3 == {pex, heard, conf[3]}
    pex.fails = 1  # failures still come first
    assert pex not in node.dial_candidates(0.0, 3)


def test_equal_candidates_come_in_random_order(node):
    """60 nodes with the same Peers list must not all dial its first 8 addresses."""
    addrs = [(f"10.0.0.{i}", 6881) for i in range(1, 61)]
    for a in addrs:
        node.add_peer(a, Source.CONF)
    firsts = {node.dial_candidates(0.0, 8)[0].addr for _ in range(50)}
    assert len(firsts) > 10
    picked = node.dial_candidates(0.0, 8)
    assert len({e.addr for e in picked}) == 8
    assert [e.addr for e in picked] != addrs[:8]


def test_backoff_grows_and_is_capped():
    e = PeerEntry(A, Source.CONF)
    waits = []
    for _ in range(8):
        e.failed(now=1000.0)
        waits.append(e.next_try - 1000.0)
    assert waits[0] == BACKOFF_FIRST_S
    assert all(x <= y for x, y in zip(waits, waits[1:]))
    assert waits[1] == 2 * waits[0]
    assert max(waits) == BACKOFF_MAX_S
    assert waits[-1] == BACKOFF_MAX_S
    assert e.fails == 8


def test_backoff_cap_holds_after_very_many_failures():
    """A dead address in Peers fails every BACKOFF_MAX_S for as long as the node runs (it never
    exits): ~1025 failures is about 70 minutes, and the backoff must still be computed."""
    e = PeerEntry(A, Source.CONF)
    for _ in range(2000):
        e.failed(now=0.0)
    assert e.next_try == BACKOFF_MAX_S


def test_retry_now_forgets_backoff(node):
    """Heard from (e.g. its first beacon after it started late): dial now, keep what we know."""
    e = node.add_peer(A, Source.CONF)
    for _ in range(3):
        e.failed(now=10.0)
    e.complete = True
    node.events.clear()
    node.retry_now(e)
    assert (e.fails, e.next_try, e.complete) == (0, 0.0, True)
    assert node.events == ["peers"]
    node.retry_now(e)  # nothing left to forget: no event
    assert node.events == ["peers"]


def test_retry_now_after_a_restart_also_forgets_completeness(node):
    e = node.add_peer(A, Source.CONF)
    e.complete = True
    node.events.clear()
    node.retry_now(e, restarted=True)
    assert (e.fails, e.next_try, e.complete) == (0, 0.0, False)
    assert node.events == ["peers"]
    assert node.dial_candidates(0.0, 10) == [e]


def test_mark_verified_notifies_once_and_lists_verified_addresses(node):
    a, b, c = (node.add_peer(x, Source.CONF) for x in (A, B, C))
    c.is_self = True
    node.events.clear()
    node.mark_verified(a)
    node.mark_verified(a)
    node.mark_verified(c)
    assert node.events == ["peers", "peers"]
    assert node.verified_addrs() == [A]
    # a link that went through the list up to version v gets only what was verified after it
    v = node.verified_version
    node.mark_verified(b)
    assert node.verified_addrs(since=v) == [B] and node.verified_addrs() == [A, B]
