"""Our node behind the bench's start gate: `python bench/gate.py ARGS` runs `python -m node ARGS`,
and the node stops itself (SIGSTOP) right after it prints `event=listening`, until the bench's
SIGCONT at T0.

Rule: the gate changes nothing but *when* the node goes on. At that line the node has bound and
listens, and has dialled nobody and read no data: the dials and the scan are greenlets that first
run once start-up returns. lt_node.py stops itself at the same point (session listening, no torrent
added yet). The bench used to SIGSTOP each process when it read the line, but its reader thread
ran some milliseconds later on a busy machine: long enough for a node to dial, and such a dial,
made into the held LAN (lab.py), goes unanswered and costs a SYN retry after T0. Now the bench
only waits until the process is stopped.
"""

import os
import signal
import sys

SOLUTION = os.environ.get("BENCH_SOLUTION") or os.path.join(  # startup.py --solution: A/B runs
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "solution")


def install():
    """Make the node stop itself once it has printed its `listening` line."""
    sys.path.insert(0, SOLUTION)
    from node import log  # sys and time only: nothing imported before gevent's patching
    emit = log.emit

    def gated_emit(level, event, **fields):
        emit(level, event, **fields)
        if event == "listening":
            os.kill(os.getpid(), signal.SIGSTOP)

    log.emit = gated_emit


def main():
    install()
    from node.__main__ import main as node_main
    return node_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
