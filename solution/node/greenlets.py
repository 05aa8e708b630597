"""gevent's Semaphore, a bounded group of greenlets (loaded without gevent.lock or gevent.pool),
and the ticks the node's periodic loops sleep to.

Rule: the node takes these from here, never from gevent.lock, gevent.pool or gevent.server.
gevent.lock imports gevent.monkey for one helper, and gevent.monkey imports inspect: about a tenth
of a node's start-up (docs/tuning.md), paid again by every container a swarm starts. The node runs
one event loop in one thread, so the Semaphore it needs is the class gevent.lock re-exports when
gevent is compiled (tests/unit/test_greenlets.py holds the two equal).
"""

import gevent
from gevent._semaphore import Semaphore
from gevent.event import Event

TICK_EARLY = 0.1  # of a tick: nearer than this to the next one, a loop waits for the one after


def until_tick(interval, after=0.0):
    """Seconds to the first multiple of `interval` on the event loop's clock at least `after`
    seconds from now. Loops that sleep by this wake in the same turn of the loop: one wake-up of
    the process instead of one each, and a wake-up costs an idle node more than what the loops
    then do (docs/tuning.md). A loop woken a hair early, at a tick the clock has not reached,
    waits for the next tick, not the hair."""
    loop = gevent.get_hub().loop
    loop.update_now()  # the time the sleep's timer will count from
    wait = after + interval - (loop.now() + after) % interval
    return wait if wait > after + TICK_EARLY * interval else wait + interval


class Group:
    """At most `size` greenlets at once: spawn() waits while the group is full. The part of
    gevent.pool.Pool the node uses: spawn, free_count, len, join, kill."""

    def __init__(self, size):
        self.size = size
        self.greenlets = set()
        self._places = Semaphore(size)
        self._empty = Event()
        self._empty.set()

    def __len__(self):
        return len(self.greenlets)

    def spawn(self, fn, *args):
        self._places.acquire()
        g = gevent.spawn(fn, *args)
        self.greenlets.add(g)
        self._empty.clear()
        g.rawlink(self._discard)
        return g

    def _discard(self, g):
        self.greenlets.discard(g)
        self._places.release()
        if not self.greenlets:
            self._empty.set()

    def wait_free(self):
        """Return once spawn() would not wait."""
        self._places.wait()

    def free_count(self):
        return self.size - len(self.greenlets)

    def join(self, timeout=None):
        """Wait until every greenlet has ended and left the group, `timeout` seconds at most."""
        self._empty.wait(timeout)

    def kill(self, timeout=None):
        gevent.killall(list(self.greenlets), block=False)
        self.join(timeout)
