"""log: logfmt lines `ts=... level=info event=x k=v`, one event per line, values quoted when they
hold spaces, quotes, '=' or newlines; the level threshold hides debug at info."""

import io
import sys

import pytest

from node import log


@pytest.fixture(autouse=True)
def reset_log():
    log.configure("info")
    yield
    log.configure("info")


def test_format_line_shape():
    line = log.format_line("info", "piece_ok", {"idx": 3, "peer": "10.0.0.2", "result": "ok"}, now=0)
    assert line == "ts=1970-01-01T00:00:00.000Z level=info event=piece_ok idx=3 peer=10.0.0.2 result=ok"


def test_timestamp_has_milliseconds_in_utc():
    line = log.format_line("warning", "x", {}, now=86400 + 3661.5)
    assert line == "ts=1970-01-02T01:01:01.500Z level=warning event=x"


def test_fields_keep_their_order():
    line = log.format_line("info", "e", {"b": 1, "a": 2, "c": 3}, now=0)
    assert line.endswith("event=e b=1 a=2 c=3")


@pytest.mark.parametrize("value,want", [
    ("plain", "plain"),
    ("", '""'),
    ("two words", '"two words"'),
    ("a=b", '"a=b"'),
    ('say "hi"', '"say \\"hi\\""'),
    ('back\\slash "q"', '"back\\\\slash \\"q\\""'),
    ("line\nbreak", '"line\\nbreak"'),
    ("tab\there", '"tab\there"'),
    (3, "3"),
    (-7, "-7"),
    (True, "True"),
    (None, "None"),
    (1.5, "1.5"),
    (2.0, "2"),
    (0.1234567, "0.123"),
    (100.0, "100"),
    (float("nan"), "nan"),
    (b"ab", "b'ab'"),
])
def test_value_formatting(value, want):
    line = log.format_line("info", "e", {"k": value}, now=0)
    assert line.endswith(" k=" + want)


def test_a_multiline_value_stays_on_one_line():
    line = log.format_line("error", "internal_error", {"why": "Traceback:\n  File x\r\nValueError"}, now=0)
    assert "\n" not in line and "\r" not in line


def _lines(capsys):
    out = capsys.readouterr().out
    assert out == "" or out.endswith("\n")
    return out.splitlines()


def test_debug_hidden_at_info(capsys):
    log.debug("noisy", n=1)
    log.info("shown", n=2)
    log.warning("warned")
    log.error("failed", why="x y")
    lines = _lines(capsys)
    assert len(lines) == 3
    assert "level=info event=shown n=2" in lines[0]
    assert "level=warning event=warned" in lines[1]
    assert 'level=error event=failed why="x y"' in lines[2]
    assert all(line.startswith("ts=") for line in lines)


@pytest.mark.parametrize("level,shown", [
    ("debug", ["debug", "info", "warning", "error"]),
    ("info", ["info", "warning", "error"]),
    ("warning", ["warning", "error"]),
    ("error", ["error"]),
])
def test_levels_filter(capsys, level, shown):
    log.configure(level)
    for name in ("debug", "info", "warning", "error"):
        getattr(log, name)("ev_" + name)
    lines = _lines(capsys)
    assert [line.split(" ")[1] for line in lines] == ["level=" + s for s in shown]
    assert [line.split(" ")[2] for line in lines] == ["event=ev_" + s for s in shown]


def test_unknown_level_is_refused():
    with pytest.raises(KeyError):
        log.configure("verbose")


def test_closed_stdout_never_stops_the_node(monkeypatch):
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)
    log.info("still_running")  # must not raise


def test_broken_pipe_never_stops_the_node(monkeypatch):
    class BrokenPipe(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", BrokenPipe())
    log.error("still_running")  # must not raise
