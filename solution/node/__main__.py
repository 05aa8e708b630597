"""`python3 -m node [flags]` runs a node; `python3 -m node status HOST[:PORT]` asks one for its status.
argv -> Config -> main.run(); this module only maps outcomes to exit codes."""

import os
import signal

# As PID 1 in a container the node ignores any signal it has no handler for. Until main.run()
# installs the real (gevent) handlers, a SIGTERM must still stop it: nothing is open yet.
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

from gevent import monkey  # noqa: E402

monkey.patch_all()

import sys  # noqa: E402

from .config import ConfigError, load  # noqa: E402


def main(argv):
    if argv[:1] == ["status"]:
        from .status import cli
        return cli(argv[1:])
    try:
        config = load(argv, os.environ)
    except ConfigError as e:
        sys.stderr.write(f"config error: {e}\n")
        return 2
    from .main import run
    return run(config)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
