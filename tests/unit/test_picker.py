"""picker: bitset helpers (span_bits, next_bit, run_length, iter_bits, runs) and `pick`: never a piece
we hold, already asked for (outside endgame) or the peer lacks; rarest first; random first piece;
runs capped at max_count; the endgame trigger. Randomness is a seeded random.Random."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import picker
from node.picker import ENDGAME_MAX_PIECES, next_bit, pick, run_length, span_bits


def bits(*idx):
    out = 0
    for i in idx:
        out |= 1 << i
    return out


def all_bits(n):
    return (1 << n) - 1


def short_id(v):
    """Readable test ids for big ints (str() of huge ints is slow and limited)."""
    return f"<{v.bit_length()}bits>" if isinstance(v, int) and v > 1 << 64 else None


def members(b):
    return {i for i in range(b.bit_length()) if (b >> i) & 1}


# -- bitset helpers -----------------------------------------------------------------------------

@pytest.mark.parametrize("first,count,want", [
    (0, 0, 0), (0, 1, 0b1), (3, 2, 0b11000), (0, 8, 0xFF), (5, 0, 0), (100, 1, 1 << 100),
])
def test_span_bits(first, count, want):
    assert span_bits(first, count) == want


@pytest.mark.parametrize("b,start,want", [
    (0, 0, -1),
    (0, 17, -1),
    (bits(0), 0, 0),
    (bits(3, 9), 0, 3),
    (bits(3, 9), 3, 3),
    (bits(3, 9), 4, 9),
    (bits(3, 9), 9, 9),
    (bits(3, 9), 10, 3),  # wraps to the lowest
    (bits(3, 9), 1000, 3),  # start beyond the top wraps too
    (bits(5), 6, 5),
    (bits(1000, 70000), 1001, 70000),
], ids=short_id)
def test_next_bit(b, start, want):
    assert next_bit(b, start) == want


@pytest.mark.parametrize("b,start,limit,want", [
    (0, 0, 10, 0),
    (0b0111, 0, 10, 3),
    (0b0111, 1, 10, 2),
    (0b0111, 0, 2, 2),
    (0b0111, 3, 10, 0),
    (0b1110, 0, 10, 0),
    (all_bits(100), 0, 64, 64),
    (all_bits(100), 90, 64, 10),
    (0b1011, 0, 0, 0),
], ids=short_id)
def test_run_length(b, start, limit, want):
    assert run_length(b, start, limit) == want


@pytest.mark.parametrize("b,want", [
    (0, []), (1, [0]), (bits(0, 2, 63, 64, 200), [0, 2, 63, 64, 200]),
], ids=short_id)
def test_iter_bits(b, want):
    assert list(picker.iter_bits(b)) == want


@pytest.mark.parametrize("b,want", [
    (0, []),
    (0b1, [(0, 1)]),
    (0b1101100111, [(0, 3), (5, 2), (8, 2)]),
    (0b1000, [(3, 1)]),
    (all_bits(1000), [(0, 1000)]),
    (bits(1, 3, 5), [(1, 1), (3, 1), (5, 1)]),
], ids=short_id)
def test_runs(b, want):
    assert list(picker.runs(b)) == want


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2 ** 300))
def test_runs_cover_exactly_the_set_bits(b):
    got = list(picker.runs(b))
    rebuilt = 0
    for first, count in got:
        assert count > 0
        rebuilt |= span_bits(first, count)
    assert rebuilt == b
    # maximal runs: never two adjacent
    for (f1, c1), (f2, _) in zip(got, got[1:]):
        assert f1 + c1 < f2


def test_holder_levels_count_holders():
    swarm = [bits(1, 2), bits(2), bits(2, 3)]
    assert picker.holder_levels(swarm, levels=4) == [bits(1, 2, 3), bits(2), bits(2), 0]


@given(st.lists(st.integers(min_value=0, max_value=2 ** 40 - 1), max_size=12))
def test_holder_levels_match_a_count_per_piece(swarm):
    levels = picker.holder_levels(swarm)
    for piece in range(40):
        holders = sum((h >> piece) & 1 for h in swarm)
        for k, more in enumerate(levels):
            assert (more >> piece) & 1 == (holders > k)


# -- pick: what it must never return --------------------------------------------------------------

def test_none_when_peer_has_nothing_we_miss():
    rng = random.Random(1)
    missing = bits(0, 1, 2)
    assert pick(missing, 0, bits(3, 4), [bits(3, 4)], rng, 8) is None
    assert pick(missing, 0, 0, [0], rng, 8) is None
    assert pick(0, 0, all_bits(10), [all_bits(10)], rng, 8) is None  # we are complete


def test_none_when_all_the_peer_could_give_is_requested_elsewhere_and_not_endgame():
    # we miss 0..19 (more than the endgame limit) and all of them are already requested
    missing = all_bits(ENDGAME_MAX_PIECES + 4)
    rng = random.Random(2)
    assert pick(missing, missing, missing, [missing], rng, 8) is None


def test_none_when_some_missing_piece_is_not_requested_yet():
    # the peer only holds pieces already requested; others are still unrequested (not endgame)
    missing = bits(0, 1, 2, 3)
    requested = bits(0, 1)
    assert pick(missing, requested, bits(0, 1), [bits(0, 1)], random.Random(3), 8) is None


@settings(max_examples=400, deadline=None)
@given(n=st.integers(min_value=1, max_value=300),
       data=st.data(),
       seed=st.integers(min_value=0, max_value=2 ** 32),
       max_count=st.integers(min_value=1, max_value=64),
       have_any=st.booleans())
def test_pick_property(n, data, seed, max_count, have_any):
    full = all_bits(n)
    rand_set = st.integers(min_value=0, max_value=full)
    missing = data.draw(rand_set, "missing")
    requested = data.draw(rand_set, "requested") & missing
    peer_has = data.draw(rand_set, "peer_has")
    mine = data.draw(rand_set, "mine") & requested
    swarm = [peer_has] + data.draw(st.lists(rand_set, max_size=5), "others")
    got = pick(missing, requested, peer_has, swarm, random.Random(seed), max_count, mine, have_any)
    # what the node checks before waking a link for a HAVE, or before working out availability
    fetchable = picker.fetchable(missing, requested, peer_has, mine)
    assert (got is None) == (fetchable == 0)
    if got is not None:
        assert (fetchable >> got[0]) & 1

    cand = missing & peer_has & ~requested
    endgame = (not cand and missing & peer_has and not (missing & ~requested)
               and missing.bit_count() <= ENDGAME_MAX_PIECES and missing & peer_has & ~mine)
    if not cand and not endgame:
        assert got is None
        return
    assert got is not None
    first, count = got
    assert 1 <= count <= max_count
    run = span_bits(first, count)
    assert run & peer_has == run, "asked for a piece the peer lacks"
    assert run & missing == run, "asked for a piece we hold"
    if cand:
        assert run & requested == 0, "asked again for a requested piece outside endgame"
    else:
        assert count == 1
        assert run & mine == 0, "endgame duplicate already asked of this peer"
    # the run is maximal up to max_count
    if count < max_count:
        assert not (cand >> (first + count)) & 1 or not cand


# -- rarest first ---------------------------------------------------------------------------------

def test_rarest_candidate_is_chosen():
    n = 20
    peer = all_bits(n)
    others = [all_bits(n) & ~bits(13)] * 3  # only this peer holds piece 13
    for seed in range(50):
        first, count = pick(all_bits(n), 0, peer, [peer] + others, random.Random(seed), 1)
        assert (first, count) == (13, 1)


def test_rarest_among_unrequested_candidates_only():
    n = 20
    peer = all_bits(n)
    others = [all_bits(n) & ~bits(13, 17)] * 3
    requested = bits(13)
    for seed in range(50):
        got = pick(all_bits(n), requested, peer, [peer] + others, random.Random(seed), 1)
        assert got == (17, 1)


def test_rarest_ties_are_broken_randomly():
    n = 30
    peer = all_bits(n)
    rare = {4, 11, 25}
    others = [all_bits(n) & ~bits(*rare)] * 2
    firsts = {pick(all_bits(n), 0, peer, [peer] + others, random.Random(s), 1)[0] for s in range(200)}
    assert firsts == rare


def test_rarest_run_extends_over_consecutive_held_pieces():
    n = 40
    peer = all_bits(n) & ~bits(25)
    others = [all_bits(n) & ~span_bits(20, 3)] * 2  # 20, 21, 22 are rare
    got = pick(all_bits(n), 0, peer, [peer] + others, random.Random(0), 100)
    first, count = got
    assert first in (20, 21, 22)
    assert first + count == 25  # stops at the hole in the peer's set
    got = pick(all_bits(n), 0, peer, [peer] + others, random.Random(0), 2)
    assert got[1] <= 2


def test_rarest_is_exact_with_many_candidates():
    n = 5000
    peer = all_bits(n)
    rare = sum(1 << i for i in range(0, n, 2))  # even pieces only held by this peer
    others = [peer & ~rare] * 4
    for seed in range(50):
        first, _ = pick(all_bits(n), 0, peer, [peer] + others, random.Random(seed), 4)
        assert first % 2 == 0


@given(n=st.integers(min_value=1, max_value=80), data=st.data(),
       seed=st.integers(min_value=0, max_value=2 ** 32))
def test_rarest_picks_a_least_held_candidate(n, data, seed):
    full = all_bits(n)
    peer = data.draw(st.integers(min_value=1, max_value=full), "peer")
    swarm = [peer] + data.draw(st.lists(st.integers(min_value=0, max_value=full), max_size=10))
    first, _ = pick(full, 0, peer, swarm, random.Random(seed), 1)
    held = {i: sum((h >> i) & 1 for h in swarm) for i in members(peer)}
    least = min(held.values())
    assert held[first] == least or (least >= picker.RAREST_LEVELS and held[first] >= least)


# -- random first piece ---------------------------------------------------------------------------

def test_random_first_piece_differs_by_seed():
    n = 100
    firsts = [pick(all_bits(n), 0, all_bits(n), [all_bits(n)], random.Random(s), 4, have_any=False)[0]
              for s in range(300)]
    assert len(set(firsts)) > 80  # spread over the file, not always piece 0
    assert firsts.count(0) < 20


def test_random_first_piece_reaches_every_sparse_candidate():
    n = 300
    peer = sum(1 << i for i in range(0, n, 9))
    firsts = {pick(all_bits(n), 0, peer, [peer], random.Random(s), 4, have_any=False)[0]
              for s in range(3000)}
    assert firsts == members(peer)


def test_random_first_piece_ignores_availability():
    # with have_any=False a common piece may be picked even though a rare one exists
    n = 50
    peer = all_bits(n)
    others = [peer & ~bits(7)] * 3
    firsts = {pick(all_bits(n), 0, peer, [peer] + others, random.Random(s), 1, have_any=False)[0]
              for s in range(100)}
    assert len(firsts) > 10


# -- endgame --------------------------------------------------------------------------------------

def test_endgame_duplicates_a_piece_not_asked_of_this_peer():
    missing = bits(3, 8, 12, 40)
    requested = missing
    mine = bits(3, 8)
    seen = set()
    for seed in range(100):
        got = pick(missing, requested, all_bits(64), [all_bits(64)], random.Random(seed), 16, mine)
        assert got is not None
        first, count = got
        assert count == 1
        assert first in (12, 40)
        seen.add(first)
    assert seen == {12, 40}


def test_endgame_nothing_left_to_duplicate():
    missing = bits(3, 8)
    assert pick(missing, missing, all_bits(10), [all_bits(10)], random.Random(0), 8, mine=missing) is None


def test_endgame_only_pieces_the_peer_has():
    missing = bits(3, 8, 9)
    got = pick(missing, missing, bits(9), [bits(9)], random.Random(0), 8, mine=0)
    assert got == (9, 1)


def test_endgame_at_the_limit_and_just_above():
    n = ENDGAME_MAX_PIECES
    at_limit = all_bits(n)
    assert pick(at_limit, at_limit, at_limit, [at_limit], random.Random(0), 8) is not None
    above = all_bits(n + 1)
    assert pick(above, above, above, [above], random.Random(0), 8) is None


# -- scale ----------------------------------------------------------------------------------------

def test_large_piece_sets():
    n = 1 << 20
    rng = random.Random(7)
    full = all_bits(n)
    have = rng.getrandbits(n)
    missing = full & ~have
    swarm = [rng.getrandbits(n) for _ in range(16)]
    requested = 0
    for have_any in (False, True):
        for peer in swarm:
            got = pick(missing, requested, peer, swarm, rng, 64, have_any=have_any)
            assert got is not None
            first, count = got
            run = span_bits(first, count)
            assert run & missing & peer == run and run & requested == 0
            requested |= run
    # endgame check on a big file with almost everything held
    missing = bits(5, n - 1)
    assert pick(missing, missing, full, [full], rng, 64) in ((5, 1), (n - 1, 1))
