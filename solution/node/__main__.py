"""`python3 -m node [flags]` runs a node; `python3 -m node status HOST[:PORT]` asks one for its status.
argv -> Config -> main.run(); this module only maps outcomes to exit codes."""

import os
import signal
import sys

# As PID 1 in a container the node ignores any signal it has no handler for. Until main.run()
# installs the real (gevent) handlers, a SIGTERM must still stop it: nothing is open yet.
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))


def main(argv):
    if argv[:1] == ["status"]:
        from .status import cli  # stdlib sockets, no gevent: a health check must start fast
        return cli(argv[1:], os.environ)
    _patch_all()  # before anything else imports socket, threading or time
    from .config import ConfigError, load
    try:
        config = load(argv, os.environ)
    except ConfigError as e:
        sys.stderr.write(f"config error: {e}\n")
        return 2
    from .main import run
    return run(config)


def _patch_all():
    """gevent's monkey patching of what the node uses, without start-up costs that buy it nothing.
    At each step gevent looks up plugins among the entry points of every installed package. We
    install no plugins, so events go to in-process subscribers only. Debian's gevent 22.10 even
    imports pkg_resources as gevent.events loads (60 ms, more than the rest of a start): while it
    loads, `pkg_resources` is a stub that finds no entry point, and then the real one is importable
    again. Patched: socket (and its DNS) and time, the blocking calls a node could make. Left
    alone: threading (the node's greenlets use gevent's own locks and queues, and the storage pool
    threads need real ones; patching it imports concurrent.futures and gevent's threading), os,
    signal (main installs gevent's handlers itself), select, queue, ssl and subprocess, which the
    node never calls."""
    import types
    stub = None
    if "pkg_resources" not in sys.modules:
        stub = sys.modules["pkg_resources"] = types.ModuleType("pkg_resources")
        stub.iter_entry_points = lambda group, name=None: iter(())
    try:
        from gevent import events
    finally:
        if stub is not None and sys.modules.get("pkg_resources") is stub:
            del sys.modules["pkg_resources"]
    if hasattr(events, "notify_and_call_entry_points"):
        events.notify_and_call_entry_points = events.notify
    from gevent import monkey
    monkey.patch_socket()
    monkey.patch_time()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
