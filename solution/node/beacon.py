"""Discovery datagrams, sans-IO: `encode(kind, instance, port) -> bytes`, `decode(bytes) -> Beacon`.

Rule: no sockets here; `discovery.py` moves the datagrams. A datagram that is short, foreign or of an
unknown version raises `BeaconError`, and the caller skips it at debug level.

Layout (16 bytes, big-endian):

    | magic "P2PB" 4B | version u8 | kind u8 | instance id 8B | TCP port u16 |

kind 1 ANNOUNCE: "I am here", broadcast every second. Hearing one proves broadcast works here.
kind 2 PROBE: "is anyone here?", unicast to each address of the /24 while broadcast seems not to
work; the receiver learns the sender from it and answers with a REPLY, so both sides learn each
other from one exchange.
kind 3 REPLY: "I am here", unicast, as the answer to a PROBE.
The instance id is random per process: a restarted peer shows a new one and is redialled at once.
"""

import struct
from collections import namedtuple

MAGIC = b"P2PB"
VERSION = 1
ANNOUNCE, PROBE, REPLY = 1, 2, 3
_LAYOUT = struct.Struct(">4sBB8sH")
SIZE = _LAYOUT.size


class BeaconError(ValueError):
    pass


# A named tuple, not a frozen dataclass: every node with discovery on loads this module at start,
# and a dataclass is generated code compiled at import (~0.6 ms a class).
Beacon = namedtuple("Beacon", "kind instance port")


def encode(kind, instance, port):
    return _LAYOUT.pack(MAGIC, VERSION, kind, instance, port)


def decode(data):
    if len(data) != SIZE:
        raise BeaconError(f"datagram of {len(data)} bytes, expected {SIZE}")
    magic, version, kind, instance, port = _LAYOUT.unpack(data)
    if magic != MAGIC:
        raise BeaconError("foreign magic")
    if version != VERSION:
        raise BeaconError(f"version {version}")
    if kind not in (ANNOUNCE, PROBE, REPLY):
        raise BeaconError(f"unknown kind {kind}")
    if port == 0:
        raise BeaconError("port 0")
    return Beacon(kind, instance, port)
