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
    # No monkey patching: the node calls gevent's socket, ssl and sleep itself, and its storage
    # threads need real locks. Patching would load gevent.events, which in Debian's gevent loads
    # pkg_resources (60 ms, more than the rest of a start).
    from .config import ConfigError, load
    try:
        config = load(argv, os.environ)
    except ConfigError as e:
        sys.stderr.write(f"config error: {e}\n")
        return 2
    from . import zope_stand_in  # gevent's loop declares interfaces nobody here queries
    sys.modules.setdefault("zope.interface", zope_stand_in)
    from .main import run
    return run(config)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
