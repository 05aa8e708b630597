"""Completion watching: one thread per container follows its log for `event=complete`.

A container counts as complete while its *current* life (since its last start) has logged
`event=complete`; a restart resets it. Following `docker logs -f` costs one idle CLI process per
container instead of hammering the engine with polls, and timestamps the line within
milliseconds of the node printing it.
"""
import re
import subprocess
import threading
import time

from .docker_cli import started_at

COMPLETE = re.compile(r"(^|\s)event=complete(\s|$)")
# While a container is stopped (chaos restarts), re-check its state this often.
STOPPED_POLL_S = 0.1
# How often wait_all() re-evaluates the "everyone complete" condition.
WAIT_POLL_S = 0.05


class CompletionWatcher:
    """Tracks, per container, the monotonic time its current life logged completion."""

    def __init__(self):
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._done, self._first_done, self._life = {}, {}, {}
        self._exited, self._procs, self._threads = set(), {}, []

    def follow(self, name):
        """Start following NAME (call right after its start returned)."""
        with self._lock:
            self._done[name] = None
        thread = threading.Thread(target=self._follow, args=(name,), daemon=True,
                                  name=f"follow-{name}")
        self._threads.append(thread)
        thread.start()

    def _follow(self, name):
        while not self._stop.is_set():
            running, stamp, finished = started_at(name)
            with self._lock:
                if stamp != self._life.get(name) or not running:
                    self._done[name] = None
                self._life[name] = stamp
                (self._exited.discard if running else self._exited.add)(name)
            if not running:
                self._stop.wait(STOPPED_POLL_S)
                continue
            self._read_life(name, stamp, finished)

    def _read_life(self, name, stamp, finished):
        """Stream NAME's log of the life started at STAMP until the container stops (or we are
        stopped). Not `--since STAMP`: a node's first lines can carry a timestamp a little before
        its StartedAt (Docker records it after the process runs), and a node that completes at
        once would be missed; the previous life ended at FINISHED, so what follows is this one's."""
        since = ["--since", finished] if finished else []
        proc = subprocess.Popen(["docker", "logs", "-f", *since, name],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace",
                                start_new_session=True)
        with self._lock:
            self._procs[name] = proc
        try:
            for line in proc.stdout:
                if COMPLETE.search(line):
                    self._mark_done(name, stamp)
                if self._stop.is_set():
                    break
        finally:
            proc.kill()
            proc.wait()

    def _mark_done(self, name, stamp):
        now = time.monotonic()
        with self._lock:
            if self._life.get(name) == stamp and self._done.get(name) is None:
                self._done[name] = now
                self._first_done.setdefault(name, now)

    def snapshot(self):
        """(done: {name: time or None}, first_done: {name: time}, exited: set) right now."""
        with self._lock:
            return dict(self._done), dict(self._first_done), set(self._exited)

    def wait_all(self, names, deadline, fail_on_exit=True, ever=False):
        """Block until every name is complete at once (or, if EVER, has completed at least
        once: under chaos some node is nearly always restarting); return that moment.

        Returns None at DEADLINE (monotonic), or early if a container exited while
        FAIL_ON_EXIT (no chaos running, so an exit is a crash).
        """
        while time.monotonic() < deadline:
            done, first, exited = self.snapshot()
            times = [(first if ever else done).get(n) for n in names]
            if all(t is not None for t in times):
                return max(times)
            if fail_on_exit and exited & set(names):
                return None
            time.sleep(WAIT_POLL_S)
        return None

    def stop(self, timeout=5.0):
        """Stop all followers and kill their `docker logs` processes."""
        self._stop.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            proc.kill()
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
