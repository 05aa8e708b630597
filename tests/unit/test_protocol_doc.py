"""docs/PROTOCOL.md stays in step with wire.py: same message kinds, same numbers."""

import os
import re

from node import beacon, wire

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "PROTOCOL.md")


def test_every_message_kind_is_documented_with_its_number():
    text = open(DOC).read()
    rows = dict((name.lower(), int(num)) for num, name in re.findall(r"^\| (\d+)\s+\| ([A-Z_]+)\s+\|", text, re.M))
    assert rows == {name: kind for kind, name in enumerate(wire.NAMES)}


def test_documented_limits_match_the_code():
    text = open(DOC).read()
    assert f"magic `{wire.MAGIC.decode()}`" in text
    assert f'magic "{beacon.MAGIC.decode()}"' in text
    assert f"({beacon.SIZE} bytes)" in text
    assert wire.MAX_PAYLOAD[wire.BITFIELD] == 512 << 10 and "512 KiB" in text


def test_the_legality_table_is_the_sessions():
    from node.session import RULES
    text = open(DOC).read()
    rows = re.findall(r"^\| ([A-Z_]+) \| (handshake|open|closed) \| (.+?) \|$", text, re.M)
    assert {name: (phase, cond) for name, phase, cond in rows} == {
        wire.NAMES[kind].upper(): (phase.value, cond or "–") for kind, (phase, cond) in RULES.items()}
