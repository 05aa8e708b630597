"""Logfmt events on stdout: ``ts=… level=info event=piece_ok idx=3 peer=10.0.0.2``.

Rule: every line the node prints goes through `emit`, one event per line, so operators can
``grep event=complete`` or ``grep level=warning`` and machines can parse the rest as key=value.
"""

import re
import sys
import time

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

_threshold = LEVELS["info"]
_NEEDS_QUOTES = re.compile(r'[ ="\n\r\t]')


def configure(level="info"):
    global _threshold
    _threshold = LEVELS[level]


def _value(v):
    if isinstance(v, float):
        v = f"{v:.3f}".rstrip("0").rstrip(".") if v == v else "nan"
    else:
        v = str(v)
    if not v or _NEEDS_QUOTES.search(v):
        v = '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'
    return v


def format_line(level, event, fields, now=None):
    now = time.time() if now is None else now
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    parts = [f"ts={ts} level={level} event={event}"]
    parts.extend(f"{k}={_value(v)}" for k, v in fields.items())
    return " ".join(parts)


def emit(level, event, **fields):
    if LEVELS[level] < _threshold:
        return
    try:
        sys.stdout.write(format_line(level, event, fields) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # stdout closed (e.g. `docker logs` pipe gone): logging must never stop the node


def debug(event, **fields):
    emit("debug", event, **fields)


def info(event, **fields):
    emit("info", event, **fields)


def warning(event, **fields):
    emit("warning", event, **fields)


def error(event, **fields):
    emit("error", event, **fields)
