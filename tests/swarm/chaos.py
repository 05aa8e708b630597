"""Chaos actions run concurrently while a swarm syncs (restarts scenarios).

`RestartChaos` restarts random containers, alternating graceful (`docker restart`, SIGTERM) and
brutal (`docker kill` + `docker start`) stops, never the same container twice within the plan's
minimum gap. Every action is logged so a failure can be matched against it.
"""
import threading
import time

from .docker_cli import DockerError, docker

# `docker restart -t 1`: the node must exit within a fraction of a second on SIGTERM; after
# 1 s Docker sends SIGKILL, which would hide a hang, so slow stops are reported separately.
STOP_GRACE_S = 1
SLOW_STOP_S = 1.0


class RestartChaos:
    """Background thread restarting random containers of NAMES per a ChaosSpec."""

    def __init__(self, names, spec, rng):
        self.names, self.spec, self.rng = list(names), spec, rng
        self.actions = []          # (seconds since chaos start, name, action, ok, seconds taken)
        self._stop = threading.Event()
        self._last = {}
        self._t0 = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos")

    def start(self):
        self._t0 = time.monotonic()
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.rng.expovariate(1.0 / self.spec.mean_interval_s)):
            now = time.monotonic()
            ready = [n for n in self.names if now - self._last.get(n, -1e9) >= self.spec.min_gap_s]
            if ready:
                self._act(self.rng.choice(ready))

    def _act(self, name):
        action = self.rng.choice(("restart", "kill-start"))
        began = time.monotonic()
        try:
            if action == "restart":
                docker("restart", "-t", STOP_GRACE_S, name)
            else:
                docker("kill", name)
                docker("start", name)
            ok = True
        except DockerError:
            ok = False
        took = time.monotonic() - began
        self._last[name] = time.monotonic()
        self.actions.append((round(began - self._t0, 2), name, action, ok, round(took, 2)))

    def stop(self, timeout=30.0):
        """Stop after the action in flight (bounded); return the action log."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return self.actions

    def slow_stops(self):
        """Graceful restarts that took long enough to suggest SIGTERM was not honoured."""
        return [a for a in self.actions if a[2] == "restart" and a[4] > STOP_GRACE_S + SLOW_STOP_S]
