"""Thin, time-bounded wrappers around the docker CLI (subprocess, no SDK).

Everything the harness asks of Docker goes through `docker()`, so every call has a timeout.
Also here: creating an internal network on a random private /24, and removing by name.
"""
import random
import subprocess

# One CLI call (run/exec/inspect) takes well under 5 s even on a loaded 2-core host; past 60 s
# the engine is wedged and waiting longer would only hide that.
CALL_TIMEOUT_S = 60.0
# Removing 60 containers in one `docker rm -f` call takes ~10-20 s on 2 cores.
BULK_TIMEOUT_S = 180.0
# 172.28-31.x.0/24: the test range agreed for this project; Docker's default address pools
# (172.17-27) and the grader's 172.20.234.0/24 stay untouched.
SUBNET_SECOND_OCTETS = (28, 29, 30, 31)
# docker-compose.yml's default /24: never picked here, so a harness run and the compose test
# can run side by side.
RESERVED_PREFIXES = ("172.29.77",)
# Random /24s rarely clash; a few retries make a clash with a concurrent run harmless.
NETWORK_CREATE_ATTEMPTS = 8
# `docker rm` takes many names at once; chunks keep the command line and each call short.
RM_CHUNK = 20


class DockerError(RuntimeError):
    """A docker CLI call failed or timed out; the message carries the command and its stderr."""


def docker(*args, timeout=CALL_TIMEOUT_S, check=True):
    """Run `docker ARGS...` -> CompletedProcess (text); DockerError on failure or timeout."""
    cmd = ["docker", *map(str, args)]
    try:
        # own session: a Ctrl-C meant for the harness must not kill a CLI mid-request (the
        # engine would finish creating a container the cleanup has already passed by)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"timed out after {timeout:.0f}s: {' '.join(cmd[:6])}") from exc
    except FileNotFoundError as exc:
        raise DockerError("docker CLI not found") from exc
    if check and proc.returncode != 0:
        raise DockerError(f"{' '.join(cmd[:6])} -> rc={proc.returncode}: {proc.stderr.strip()}")
    return proc


def unavailable_reason():
    """None when the engine answers; otherwise a one-line reason (used to skip swarm tests)."""
    try:
        proc = docker("info", "--format", "{{.ServerVersion}}", timeout=15, check=False)
    except DockerError as exc:
        return str(exc)
    if proc.returncode != 0 or not proc.stdout.strip():
        return f"`docker info` failed: {proc.stderr.strip()[:200]}"
    return None


def image_exists(image):
    """True when IMAGE is present locally (no registry is ever contacted)."""
    return docker("image", "inspect", image, check=False, timeout=30).returncode == 0


def create_network(name, label, rng=None):
    """Create an --internal network NAME on a random 172.28-31.x.0/24; return its prefix 'a.b.c'."""
    rng = rng or random.SystemRandom()
    last = None
    for _ in range(NETWORK_CREATE_ATTEMPTS):
        prefix = f"172.{rng.choice(SUBNET_SECOND_OCTETS)}.{rng.randrange(256)}"
        if prefix in RESERVED_PREFIXES:
            continue
        proc = docker("network", "create", "--internal", "--subnet", f"{prefix}.0/24",
                      "--label", label, name, check=False)
        if proc.returncode == 0:
            return prefix
        last = proc.stderr.strip()
        if "overlap" not in last.lower():
            break
    raise DockerError(f"network create {name} failed: {last}")


def remove_containers(names):
    """Force-remove the named containers and their anonymous volumes; missing ones are fine."""
    names = list(names)
    for i in range(0, len(names), RM_CHUNK):
        docker("rm", "-f", "-v", *names[i:i + RM_CHUNK], check=False, timeout=BULK_TIMEOUT_S)


def remove_labelled(label):
    """Force-remove every container carrying LABEL ('key=value'); return how many there were."""
    names = docker("ps", "-aq", "--filter", f"label={label}", check=False).stdout.split()
    remove_containers(names)
    return len(names)


def remove_network(name):
    """Remove the named network; a missing one is fine. True if it is gone."""
    proc = docker("network", "rm", name, check=False)
    return proc.returncode == 0 or "not found" in proc.stderr


def states(names):
    """{name: (running: bool, exit_code: int)} for the named containers."""
    proc = docker("inspect", "-f", "{{.Name}} {{.State.Running}} {{.State.ExitCode}}",
                  *names, check=False, timeout=BULK_TIMEOUT_S)
    out = {}
    for line in proc.stdout.splitlines():
        name, running, code = line.split()
        out[name.lstrip("/")] = (running == "true", int(code))
    return out


NEVER = "0001-01-01T00:00:00Z"  # what Docker reports as FinishedAt before a container's first exit


def started_at(name):
    """(running, StartedAt, FinishedAt) of one container as RFC3339 strings (FinishedAt: of its
    previous life; None before the first), or (False, None, None) if it is gone."""
    proc = docker("inspect", "-f", "{{.State.Running}} {{.State.StartedAt}} {{.State.FinishedAt}}",
                  name, check=False)
    if proc.returncode != 0:
        return False, None, None
    running, stamp, finished = proc.stdout.split()
    return running == "true", stamp, None if finished == NEVER else finished


def logs_tail(name, lines=40):
    """The last LINES lines (stdout and stderr merged) of a container's log, as text."""
    proc = docker("logs", "--tail", lines, name, check=False)
    return (proc.stdout + proc.stderr).rstrip()
