"""What one peer may cost us: the replies we queue for it, the work its frames make us do, and the
addresses it may teach us; and what the node may upload in all (an optional rate limit).

Rule: bookkeeping only (time comes in as an argument). conn.py asks before it acts on a frame and
waits when a budget is spent: it stops reading from that peer, so a peer that floods us is slowed
to what it is allowed, its memory is bounded, and it never delays other links.
"""

MAX_QUEUED_BYTES = 1 << 20  # replies queued for one peer; past it we read no more from it
MAX_QUEUED_FRAMES = 128  # the same in frames (and pieces to serve), for small replies
WORK_RATE = 32 << 20  # bytes of bitset work per second one peer's frames may cost us...
WORK_BURST = 8 << 20  # ...after a burst this big (a full BITFIELD of the largest file is 512 KiB)
FRAME_COST = 64  # any frame: decoding it and acting on it
STATUS_COST = 32 << 10  # a STATUS reply: a snapshot turned into JSON
PEX_ADDR_COST = 4 << 10  # one address of a PEERS frame: decoding it costs what a bitset op on 4-8 KiB does
PEX_PER_MINUTE = 512  # addresses learned from one peer per minute; more is noise or an attack


class Budget:
    def __init__(self, now):
        self.queued_bytes = 0
        self.queued_frames = 0
        self._tokens = WORK_BURST
        self._tokens_at = now
        self._pex_since = now
        self._pex_left = PEX_PER_MINUTE

    # -- replies --------------------------------------------------------------------------------
    def queued(self, nbytes):
        self.queued_bytes += nbytes
        self.queued_frames += 1

    def sent(self, nbytes):
        self.queued_bytes -= nbytes
        self.queued_frames -= 1

    @property
    def replies_full(self):
        return self.queued_bytes > MAX_QUEUED_BYTES or self.queued_frames > MAX_QUEUED_FRAMES

    @property
    def replies_low(self):
        """Drained enough to read again (half the budget: no wake-up per frame)."""
        return self.queued_bytes <= MAX_QUEUED_BYTES // 2 and self.queued_frames <= MAX_QUEUED_FRAMES // 2

    # -- work -----------------------------------------------------------------------------------
    def spend(self, cost, now):
        """Charge `cost` bytes of work (the frames read since the last charge); returns how long
        to wait before reading on (0: at once)."""
        self._tokens = min(WORK_BURST, self._tokens + (now - self._tokens_at) * WORK_RATE) - cost
        self._tokens_at = now
        return -self._tokens / WORK_RATE if self._tokens < 0 else 0.0

    # -- peer exchange --------------------------------------------------------------------------
    def pex_allowed(self, n, now):
        """How many of n addresses from this peer we may take now."""
        if now - self._pex_since >= 60.0:
            self._pex_since, self._pex_left = now, PEX_PER_MINUTE
        take = min(n, self._pex_left)
        self._pex_left -= take
        return take


class UploadPace:
    """The node's upload limit, shared by all links: each send books the next free slot of the
    link's time at `rate` bytes/s, in order, so links share the rate and none waits twice."""

    def __init__(self, rate):
        self.rate = rate
        self._free_at = 0.0

    def delay(self, nbytes, now):
        """Seconds to wait before sending nbytes (books the time they take)."""
        start = max(now, self._free_at)
        self._free_at = start + nbytes / self.rate
        return start - now
