"""Chaos actions run concurrently while a swarm syncs (restarts scenarios).

`RestartChaos` restarts random containers: graceful (`docker stop`, SIGTERM) or brutal
(`docker kill`) stops, each followed by `docker start`; a few at once, never the same container
twice within the plan's minimum gap. Every action is logged so a failure can be matched against it.
"""
import threading
import time
from dataclasses import dataclass

from .docker_cli import DockerError, docker

# Graceful stops give the node this long (`docker stop -t`) before Docker sends SIGKILL; the
# contract says it exits 0 "within a fraction of a second", so exit code 137 means SIGTERM was
# ignored. A node younger than STARTUP_GRACE_S may not have installed its handler yet (PID 1
# ignores signals it has no handler for; importing gevent takes ~1 s on a loaded 2-core host):
# reported as a warning, not a failure.
STOP_GRACE_S = 2
STARTUP_GRACE_S = 3.0


@dataclass
class ChaosAction:
    """One restart: when (s since chaos start), what, the node's age then, and how it went."""
    at: float
    name: str
    kind: str                  # "stop-start" (SIGTERM) or "kill-start" (SIGKILL)
    age: float                 # s since this container's previous start returned
    ok: bool = True
    took: float = 0.0
    exit_code: int = None      # after a graceful stop: 0 expected


class RestartChaos:
    """Background thread restarting random containers of NAMES per a ChaosSpec."""

    def __init__(self, names, spec, rng, born=None):
        """BORN: {name: monotonic time its start returned}, to know each node's age."""
        self.names, self.spec, self.rng = list(names), spec, rng
        self.actions = []          # ChaosAction, in completion order
        self.started = None        # monotonic time the chaos began
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(spec.parallel)
        self._busy, self._last, self._born, self._workers = set(), {}, dict(born or {}), []
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos")

    def start(self):
        self.started = time.monotonic()
        self._thread.start()

    def _pick(self):
        """A container neither being restarted nor restarted within min_gap_s, or None."""
        now = time.monotonic()
        with self._lock:
            ready = [n for n in self.names if n not in self._busy
                     and now - self._last.get(n, -1e9) >= self.spec.min_gap_s]
            name = self.rng.choice(ready) if ready else None
            if name:
                self._busy.add(name)
            return name

    def _run(self):
        while not self._stop.wait(self.rng.expovariate(1.0 / self.spec.mean_interval_s)):
            if not self._slots.acquire(timeout=0.1):
                continue
            name = self._pick()
            if name is None:
                self._slots.release()
                continue
            worker = threading.Thread(target=self._act, args=(name,), daemon=True)
            self._workers.append(worker)
            worker.start()

    def _act(self, name):
        began = time.monotonic()
        act = ChaosAction(round(began - self.started, 2), name,
                          self.rng.choice(("stop-start", "kill-start")),
                          round(began - self._born.get(name, self.started), 2))
        try:
            if act.kind == "stop-start":
                docker("stop", "-t", STOP_GRACE_S, name)
                act.exit_code = int(docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout)
            else:
                docker("kill", name)
            docker("start", name)
        except (DockerError, ValueError):
            act.ok = False
        finally:
            with self._lock:
                self._busy.discard(name)
                self._last[name] = self._born[name] = time.monotonic()
            self._slots.release()
        act.took = round(time.monotonic() - began, 2)
        self.actions.append(act)

    def stop(self, timeout=30.0):
        """Stop starting actions, wait for those in flight (bounded); return the action log."""
        self._stop.set()
        end = time.monotonic() + timeout
        for thread in [self._thread, *self._workers]:
            if thread.is_alive():
                thread.join(max(0.0, end - time.monotonic()))
        return self.actions

    def ignored_sigterm(self, young):
        """Graceful stops that did not exit 0: of nodes younger than STARTUP_GRACE_S if YOUNG,
        else of older ones (a contract violation)."""
        return [a for a in self.actions if a.exit_code not in (None, 0)
                and (a.age < STARTUP_GRACE_S) == young]

    def failed(self):
        """Actions Docker refused (e.g. `docker start` of a container that would not start)."""
        return [a for a in self.actions if not a.ok]
