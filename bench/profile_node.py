"""Our node under cProfile, for `bench/run.py --profile DIR`: the same argv as `python -m node`,
and on exit each process writes the main thread's CPU profile to DIR/<pid>.prof
(from the bench's SIGCONT on: the timed span, without start-up).
Read them with `python bench/profile_node.py --report DIR` (all hosts' profiles summed).
Only the main thread is profiled: hashing and pwrite in the thread pool show as waits."""

import cProfile
import io
import os
import pstats
import signal
import sys
import time


def report(d, top=40):
    files = [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".prof")]
    st = pstats.Stats(*files, stream=io.StringIO())  # quiet: it would list every file
    st.stream = sys.stdout
    print(f"{len(files)} profiles from {d}, main-thread CPU seconds")
    st.strip_dirs().sort_stats("tottime").print_stats(top)


def main():
    if sys.argv[1:2] == ["--report"]:
        return report(sys.argv[2])
    out = os.environ["NODE_PROFILE_DIR"]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gate
    gate.install()  # the same start gate as without profiling
    prof = cProfile.Profile(time.thread_time)  # CPU, not wall: greenlets wait a lot

    def barrier(*_):  # the bench's first SIGCONT: start-up is over, the timed span begins
        signal.signal(signal.SIGCONT, signal.SIG_DFL)  # (it sends another before SIGTERM)
        prof.disable()
        prof.clear()
        prof.enable()

    signal.signal(signal.SIGCONT, barrier)
    prof.enable()
    try:
        from node.__main__ import main as node_main
        return node_main(sys.argv[1:])
    finally:
        prof.disable()
        prof.dump_stats(os.path.join(out, f"{os.getpid()}.prof"))


if __name__ == "__main__":
    sys.exit(main())
