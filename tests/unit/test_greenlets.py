"""greenlets: the Semaphore is gevent.lock's own class, a Group never runs more than its size
at once, starting the next as soon as one ends, and loops that sleep to ticks wake together."""

import gevent
import gevent.lock
from gevent._compat import PURE_PYTHON
from gevent.event import Event

from node.greenlets import Group, Semaphore, until_tick


def test_semaphore_is_the_one_gevent_lock_exports():
    # gevent.lock wraps it only for pure-Python builds, whose extra locking is for several threads.
    assert PURE_PYTHON or Semaphore is gevent.lock.Semaphore


def test_a_full_group_starts_the_next_greenlet_once_one_ends():
    group, gates, started = Group(2), [Event() for _ in range(3)], []

    def work(i):
        started.append(i)
        gates[i].wait()

    spawner = gevent.spawn(lambda: [group.spawn(work, i) for i in range(3)])
    gevent.sleep(0.05)
    assert started == [0, 1] and len(group) == 2 and group.free_count() == 0
    assert not spawner.ready()  # the third spawn waits for a place
    gates[0].set()
    spawner.join(timeout=1)
    gevent.sleep(0.05)
    assert started == [0, 1, 2] and len(group) == 2
    gates[1].set()
    gates[2].set()
    group.join(timeout=1)
    assert len(group) == 0 and group.free_count() == 2


def test_wait_free_returns_once_a_place_frees_and_kill_ends_everyone():
    group, gate = Group(1), Event()
    group.spawn(gate.wait)
    waiter = gevent.spawn(group.wait_free)
    gevent.sleep(0.05)
    assert not waiter.ready()
    gate.set()
    waiter.join(timeout=1)
    assert waiter.ready()
    group.spawn(gevent.sleep, 60)
    group.kill(timeout=1)
    assert len(group) == 0


def test_loops_sleeping_to_ticks_wake_the_process_once_a_tick():
    """An idle node's periodic loops cost one wake-up of the process per tick, not one each."""
    loop, turns, wakes = gevent.get_hub().loop, [0], []
    counter = loop.prepare()  # runs once per turn of the loop: once per wake-up
    counter.start(lambda: turns.__setitem__(0, turns[0] + 1))

    def periodic(interval):
        while True:
            gevent.sleep(until_tick(interval))
            wakes.append(interval)

    loops = []
    for interval in (0.05, 0.1, 0.05, 0.1):  # started out of step, as a node's loops are
        loops.append(gevent.spawn(periodic, interval))
        gevent.sleep(0.013)
    turns[0], wakes[:] = 0, []
    gevent.sleep(0.6)
    gevent.killall(loops)
    counter.stop()
    assert 32 <= len(wakes) <= 40  # 12 ticks of 0.05 s for two loops, 6 of 0.1 s for two: 36
    assert turns[0] <= 12 + 3  # ... in 12 wake-ups (and this test's own)
