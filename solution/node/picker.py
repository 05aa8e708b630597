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

EXACT_RAREST_LIMIT = 512  # up to this many candidates, scan all of them for the rarest
RAREST_SAMPLES = 24  # above it, the rarest of this many random candidates (cost stays flat)
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


def availability(piece, swarm):
    return sum((h >> piece) & 1 for h in swarm)


def _rarest(cand, swarm, rng):
    n = cand.bit_count()
    if n <= EXACT_RAREST_LIMIT:
        positions = list(iter_bits(cand))
    else:
        top = cand.bit_length()
        positions = {next_bit(cand, rng.randrange(top)) for _ in range(RAREST_SAMPLES)}
        positions = sorted(positions)
    counts = [availability(p, swarm) for p in positions]
    least = min(counts)
    return rng.choice([p for p, c in zip(positions, counts) if c == least])


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
    wanted = missing & peer_has
    cand = wanted & ~requested
    if not cand:
        if not wanted or (missing & ~requested) or missing.bit_count() > ENDGAME_MAX_PIECES:
            return None
        cand = wanted & ~mine & ~twice  # endgame
        if not cand:
            return None
        first = next_bit(cand, rng.randrange(cand.bit_length()))
        return first, 1
    if have_any:
        first = _rarest(cand, swarm, rng)
    else:
        first = next_bit(cand, rng.randrange(cand.bit_length()))
    return first, run_length(cand, first, max_count)
