"""Fixtures of the container tests: skip cleanly without Docker, fail clearly without the image,
and a `swarm` runner that executes a plan, reports it and asserts it passed.

Deselect groups by marker (pytest.ini): -m "not scale", -m "not restarts and not discovery".
"""
import os
import signal

import pytest

from . import docker_cli as dc
from .harness import DEFAULT_IMAGE, SwarmRun
from .report import append_jsonl, line


def _sigterm(_signo, _frame):
    raise KeyboardInterrupt  # unwind through the runs' cleanup, as Ctrl-C does


def pytest_configure(config):
    """SIGTERM (CI cancelling a job, `timeout`) cleans up like Ctrl-C instead of leaking."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm)


@pytest.fixture(scope="session")
def docker_ready():
    """Skip (with the reason) when no Docker engine answers."""
    reason = dc.unavailable_reason()
    if reason:
        pytest.skip(f"Docker engine unavailable ({reason}); start one with "
                    f"`bash scripts/docker-setup.sh`")


@pytest.fixture(scope="session")
def image(docker_ready):
    """The node image under test ($IMAGE); a missing image is a failure, not a skip."""
    name = os.environ.get("IMAGE", DEFAULT_IMAGE)
    if not dc.image_exists(name):
        pytest.fail(f"image {name} not found: build it with `make image` "
                    f"(docker build -t {name} solution)")
    return name


@pytest.fixture
def swarm(image):
    """run(plan) -> RunResult: execute PLAN, print/record its line, assert it passed."""
    def run(plan):
        result = SwarmRun(plan, image=image).execute()
        print(line(result), flush=True)
        for warning in result.warnings:
            print(f"  warning: {warning[:1000]}", flush=True)
        append_jsonl(result)
        details = "\n  ".join(f[:500] for f in result.failures)
        assert result.ok, (f"{plan.scenario} seed={plan.seed} failed; reproduce: "
                           f"{plan.reproduce()}\n  {details}")
        return result
    return run

