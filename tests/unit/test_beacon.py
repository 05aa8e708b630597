"""beacon: the discovery datagram codec. Our own packets decode; foreign, short, long, unknown-kind,
other-version and port-0 datagrams raise BeaconError (the caller skips them); a restarted peer's
new instance id is visible in what we decode."""

import ipaddress
import os
import struct

from types import SimpleNamespace

import pytest

from node import beacon
from node.beacon import ANNOUNCE, PROBE, REPLY, Beacon, BeaconError
from node.discovery import Discovery
from node.state import NodeState

INSTANCE = b"\x10\x20\x30\x40\x50\x60\x70\x80"


@pytest.mark.parametrize("kind", [ANNOUNCE, PROBE, REPLY])
@pytest.mark.parametrize("port", [1, 6881, 65535])
def test_round_trip(kind, port):
    packet = beacon.encode(kind, INSTANCE, port)
    assert len(packet) == beacon.SIZE == 16
    assert beacon.decode(packet) == Beacon(kind, INSTANCE, port)


def test_layout():
    assert beacon.encode(ANNOUNCE, INSTANCE, 0x1AE1) == b"P2PB\x01\x01" + INSTANCE + b"\x1a\xe1"
    assert beacon.encode(PROBE, INSTANCE, 6881)[5] == 2


def test_our_own_packet_decodes_from_bytearray_and_memoryview():
    packet = beacon.encode(ANNOUNCE, INSTANCE, 6881)
    assert beacon.decode(bytearray(packet)).instance == INSTANCE
    assert beacon.decode(memoryview(packet)).port == 6881


def test_a_restarted_peer_is_redialled_at_once_and_not_trusted_complete():
    """A new instance id at a known address: its backoff is forgotten (dial it now), and what
    we knew of its pieces is not (it may have lost its file)."""
    st = NodeState(b"ours-id!")
    disc = Discovery(SimpleNamespace(config=SimpleNamespace(port=6881, bind="127.0.0.5"), state=st))
    disc._heard("127.0.0.9", beacon.Beacon(ANNOUNCE, INSTANCE, 6881))
    entry = st.peers[("127.0.0.9", 6881)]
    entry.link_down(None, now=100.0, benign=True, productive=True, complete=True)
    entry.failed(now=100.0)
    disc._heard("127.0.0.9", beacon.Beacon(ANNOUNCE, INSTANCE, 6881))  # same instance: nothing new
    assert entry.fails == 1 and entry.complete
    disc._heard("127.0.0.9", beacon.Beacon(ANNOUNCE, os.urandom(8), 6881))
    assert (entry.fails, entry.next_try, entry.complete) == (0, 0.0, False)
    assert st.dial_candidates(now=0.0, limit=8) == [entry]


def _packet(magic=b"P2PB", version=1, kind=ANNOUNCE, instance=INSTANCE, port=6881):
    return struct.pack(">4sBB8sH", magic, version, kind, instance, port)


@pytest.mark.parametrize("packet", [
    pytest.param(_packet(magic=b"BSYN"), id="foreign-magic"),
    pytest.param(_packet(magic=b"p2pb"), id="magic-case"),
    pytest.param(b"", id="empty"),
    pytest.param(_packet()[:15], id="short"),
    pytest.param(_packet()[:4], id="magic-only"),
    pytest.param(_packet() + b"\x00", id="long"),
    pytest.param(_packet() * 2, id="two-packets"),
    pytest.param(_packet(kind=0), id="kind-0"),
    pytest.param(_packet(kind=4), id="kind-4"),
    pytest.param(_packet(kind=255), id="kind-255"),
    pytest.param(_packet(version=0), id="version-0"),
    pytest.param(_packet(version=2), id="version-2"),
    pytest.param(_packet(port=0), id="port-0"),
])
def test_bad_datagrams_raise_beacon_error(packet):
    with pytest.raises(BeaconError):
        beacon.decode(packet)


def test_beacon_error_is_a_value_error():
    # callers that catch ValueError around decoding still skip bad datagrams
    assert issubclass(BeaconError, ValueError)


def test_sweeps_slow_down_after_the_first_few():
    from node.discovery import SWEEP_REPEAT_S, SWEEP_REPEAT_SLOW_S, sweep_pause
    assert all(SWEEP_REPEAT_S[0] <= sweep_pause(n) <= SWEEP_REPEAT_S[1] for n in (1, 2))
    assert sweep_pause(3) == sweep_pause(50) == SWEEP_REPEAT_SLOW_S


def test_announces_thin_out_on_a_crowded_subnet_and_the_first_goes_out_at_start(monkeypatch):
    """Every ANNOUNCE wakes every node of the subnet. A node announces at once when it starts (a
    newcomer or restarted peer is heard and dialled then), every second while few others do, and
    less often the more it hears, so a node of a 60-node subnet hears ~10 a second, not 60, and on
    the second's tick, so that it wakes for them about once a second."""
    from node import discovery
    disc = Discovery(SimpleNamespace(config=SimpleNamespace(port=6881, bind="127.0.0.5"), state=NodeState(b"x")))
    disc.ifaces = [ipaddress.ip_interface("10.9.0.5/24")]
    events = []
    monkeypatch.setattr(disc, "_send", lambda kind, ip: events.append(("send", ip)))

    def sleep(s):
        events.append(("sleep", s))
        disc._seen.update({f"10.9.0.{i}": b"i" for i in range(10, 10 + 30 * len(events))})
        if len(events) > 6:
            raise StopIteration

    monkeypatch.setattr(discovery.gevent, "sleep", sleep)
    with pytest.raises(StopIteration):
        disc._announce_loop()
    assert events[0] == ("send", "10.9.0.255")
    pauses = [s for what, s in events if what == "sleep"]
    tick = discovery.ANNOUNCE_INTERVAL_S  # every ANNOUNCE on a tick: a node hears a second's in one wake-up
    assert pauses[0] <= 1.1 * tick and pauses == sorted(pauses) and pauses[-1] > 5 * tick
    assert all(abs((discovery.gevent.get_hub().loop.now() + s + tick / 2) % tick - tick / 2) < 0.05 for s in pauses)
    for n in (2, 10, 60, 254):  # n nodes, each hearing the other n - 1
        heard_per_s = (n - 1) / discovery.announce_interval(n - 1)
        assert heard_per_s <= discovery.ANNOUNCES_HEARD_PER_S
