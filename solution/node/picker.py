"""Which pieces to ask a peer for next. Pure: no sockets, no clock; randomness comes in as `rng`.

Rule: piece sets are Python ints used as bitsets (bit i = piece i), so every whole-set operation
(what we miss & what the peer has & not yet requested) runs in C, even for millions of pieces.

Policy, from BitTorrent (BEP 3 and the classic client):
- a random first piece while we hold nothing, so fresh leechers of one seeder fetch different pieces
  and can trade them at once;
- then rarest first, availability counted from the bitfields of connected peers;
- each request is a run of consecutive pieces starting there, up to `max_count`, so small pieces
  cost one round trip per run, not per piece;
- endgame: once every missing piece is already requested and few remain, ask this peer too,
  at most one extra request per piece (the first answer wins, the duplicate is dropped).
"""

RAREST_LEVELS = 8  # holders counted exactly up to this many; pieces with more are equally common
UNIFORM_CHOICE_MAX = 64  # up to this many tied pieces, each is equally likely to be chosen
ENDGAME_MAX_PIECES = 16  # duplicate requests only when this few pieces remain


def span_bits(first, count):
    return ((1 << count) - 1) << first


def next_bit(bits, start):
    """Lowest set bit at or after `start`, wrapping to the lowest overall; -1 if none."""
    high = bits >> start
    if high:
        return start + (high & -high).bit_length() - 1
    return (bits & -bits).bit_length() - 1 if bits else -1


def run_length(bits, start, limit):
    """Number of consecutive set bits from `start`, at most `limit`."""
    window = (bits >> start) & ((1 << limit) - 1)
    return (~window & (window + 1)).bit_length() - 1


def iter_bits(bits):
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low


def runs(bits):
    """Yield (first, count) for each run of consecutive set bits."""
    start = 0
    while True:
        first = next_bit(bits, start)
        if first < start:  # wrapped or none
            return
        count = run_length(bits, first, (bits >> first).bit_length())
        yield first, count
        start = first + count


def holder_levels(swarm, levels=RAREST_LEVELS):
    """more_than[k]: the pieces held by more than k of the bitsets in `swarm`, for k < levels.
    A bit-sliced count: len(swarm) x levels whole-set operations, however many pieces there are
    (128 pieces among 16 peers: 10 us, where counting each candidate's holders took 90 us)."""
    more_than = [0] * levels
    for i, h in enumerate(swarm):
        for k in range(min(i, levels - 1), 0, -1):  # after i bitsets, no piece has more than i
            more_than[k] |= more_than[k - 1] & h
        more_than[0] |= h
    return more_than


def random_bit(bits, rng):
    """A set bit of `bits` (non-zero): uniformly among few, else the first at or after a random
    position (pieces after a gap are likelier, at a cost that does not grow with the set)."""
    if bits.bit_count() <= UNIFORM_CHOICE_MAX:
        return rng.choice(list(iter_bits(bits)))
    return next_bit(bits, rng.randrange(bits.bit_length()))


def _rarest(cand, swarm, rng):
    """A candidate held by the fewest peers of `swarm` (ties broken at random)."""
    for more in holder_levels(swarm):
        rarest = cand & ~more
        if rarest:
            return random_bit(rarest, rng)
    return random_bit(cand, rng)


def fetchable(missing, requested, peer_has, mine=0, twice=0):
    """The pieces pick() may ask this peer for: wanted and not requested yet; in the endgame
    (every missing piece requested, few left), wanted and requested from one other peer only."""
    wanted = missing & peer_has
    cand = wanted & ~requested
    if cand or not wanted or (missing & ~requested) or missing.bit_count() > ENDGAME_MAX_PIECES:
        return cand
    return wanted & ~mine & ~twice


def pick(missing, requested, peer_has, swarm, rng, max_count, mine=0, have_any=True, twice=0):
    """Next request to send this peer, as (first, count), or None.

    missing:   pieces we lack (scanned and bad, or never had)
    requested: pieces already requested from any peer
    peer_has:  pieces this peer holds
    swarm:     bitsets of every connected peer (availability)
    mine:      pieces already requested from this peer (excluded from endgame duplicates)
    twice:     pieces already requested from two peers (never a third request)
    have_any:  False while we hold no piece at all (random first piece)
    """
    cand = fetchable(missing, requested, peer_has, mine, twice)
    if not cand:
        return None
    if cand & requested:  # endgame: one piece at a time, a duplicate request
        return random_bit(cand, rng), 1
    first = _rarest(cand, swarm, rng) if have_any else random_bit(cand, rng)
    return first, run_length(cand, first, max_count)
