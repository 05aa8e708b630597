"""wire: every message kind round-trips through encode -> decode_header/decode_payload, and a
peer's malformed frame raises WireError (oversize ones from the header alone). Frames split
across reads, and what may come when: test_session.py (the session owns the receive path)."""

import struct

import pytest

from node import wire
from node.wire import (Bitfield, GetMeta, Have, Hello, Meta, Peers, Pieces, Reject, Request,
                       Status, StatusRequest, WireError)

ALL_KINDS = [
    Hello(node_id=b"\x01" * 8, port=6881, meta_id=b"\xaa" * 20),
    Hello(node_id=b"abcdefgh", port=1),  # no meta yet: 20 zero bytes
    Bitfield(b"\xff\x01\x80"),
    Bitfield(b""),
    Have(7, 3),
    Request(0, 1),
    Request(2 ** 32 - 1, 2 ** 32 - 1),
    Pieces(5, 2, b"hello world" * 10),
    Pieces(0, 0, b""),
    Reject(9, 4),
    GetMeta(),
    Meta(2048, 256, tuple(bytes([i]) * 20 for i in range(8))),
    Meta(0, 256, ()),
    Meta(2 ** 64 - 1, 2 ** 32 - 1, (b"\x00" * 20,)),
    Peers((("10.0.0.2", 6881), ("172.31.111.42", 7000), ("255.255.255.255", 65535))),
    Peers(()),
    StatusRequest(),
    Status(b'{"have": 3, "pieces": 8}'),
]


def frame(kind, payload=b""):
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def decode(data):
    """Whole frames -> messages, with the codec alone."""
    out, pos = [], 0
    while pos < len(data):
        kind, n = wire.decode_header(data[pos:pos + wire.HEADER.size])
        payload = data[pos + wire.HEADER.size:pos + wire.HEADER.size + n]
        if len(payload) < n:
            return out  # truncated
        out.append(wire.decode_payload(kind, payload))
        pos += wire.HEADER.size + n
    return out


@pytest.mark.parametrize("msg", ALL_KINDS, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    assert decode(wire.encode(msg)) == [msg]


def test_every_kind_is_covered():
    assert {type(m) for m in ALL_KINDS} == {Hello, Bitfield, Have, Request, Pieces, Reject, GetMeta,
                                            Meta, Peers, StatusRequest, Status}


def test_encoded_layout_matches_the_documented_table():
    assert wire.encode(Have(1, 2)) == b"\x00\x00\x00\x09\x02" + b"\x00\x00\x00\x01\x00\x00\x00\x02"
    assert wire.encode(GetMeta()) == b"\x00\x00\x00\x01\x06"
    hello = wire.encode(Hello(b"N" * 8, 0x1AE1, b"M" * 20))
    assert hello == b"\x00\x00\x00\x24\x00" + b"P2PS\x01" + b"N" * 8 + b"\x1a\xe1" + b"M" * 20
    assert wire.encode(Peers((("1.2.3.4", 258),))) == b"\x00\x00\x00\x07\x08\x01\x02\x03\x04\x01\x02"


def test_encode_rejects_non_messages():
    with pytest.raises(TypeError):
        wire.encode(("have", 1, 2))


def test_pieces_header_plus_data_is_a_pieces_frame():
    data = bytes(range(256)) * 3
    raw = wire.pieces_header(12, 3, len(data)) + data
    assert raw == wire.encode(Pieces(12, 3, data))
    assert decode(raw) == [Pieces(12, 3, data)]


def test_largest_allowed_frame_of_a_fixed_kind_is_accepted():
    payload = bytes(wire.MAX_PAYLOAD[wire.PEERS])
    msgs = decode(frame(wire.PEERS, payload))
    assert len(msgs) == 1 and len(msgs[0].addrs) == wire.MAX_PEERS_PER_FRAME


# -- a peer's mistakes ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(wire.MAX_PAYLOAD), ids=lambda k: wire.NAMES[k])
def test_oversize_frame_is_rejected_from_the_header_alone(kind):
    header = struct.pack(">IB", wire.MAX_PAYLOAD[kind] + 2, kind)  # one byte over
    with pytest.raises(WireError):
        wire.decode_header(header)


@pytest.mark.parametrize("kind", sorted(wire.MAX_PAYLOAD), ids=lambda k: wire.NAMES[k])
def test_max_length_header_is_not_rejected(kind):
    header = struct.pack(">IB", wire.MAX_PAYLOAD[kind] + 1, kind)
    assert wire.decode_header(header) == (kind, wire.MAX_PAYLOAD[kind])


def test_huge_length_is_rejected_before_the_payload_arrives():
    with pytest.raises(WireError):
        wire.decode_header(b"\xff\xff\xff\xff\x04")  # a 4 GiB PIECES frame


@pytest.mark.parametrize("kind", [11, 12, 99, 255])
def test_unknown_kind(kind):
    with pytest.raises(WireError):
        decode(frame(kind, b""))


def test_length_zero_is_rejected():
    with pytest.raises(WireError):
        decode(b"\x00\x00\x00\x00\x02")


def test_hello_with_bad_magic():
    good = wire.encode(Hello(b"\x01" * 8, 6881))
    bad = good[:5] + b"XXXX" + good[9:]
    with pytest.raises(WireError):
        decode(bad)


def test_hello_short_payload():
    with pytest.raises(WireError):
        decode(frame(wire.HELLO, b"P2PS\x01" + b"\x00" * 10))


@pytest.mark.parametrize("kind", [wire.HAVE, wire.REQUEST, wire.REJECT], ids=lambda k: wire.NAMES[k])
@pytest.mark.parametrize("n", [0, 4, 7])
def test_range_payload_of_wrong_size(kind, n):
    with pytest.raises(WireError):
        decode(frame(kind, b"\x00" * n))


@pytest.mark.parametrize("n", [0, 7])
def test_pieces_shorter_than_its_range(n):
    with pytest.raises(WireError):
        decode(frame(wire.PIECES, b"\x00" * n))


@pytest.mark.parametrize("n", [0, 11, 13, 31, 12 + 19, 12 + 21])
def test_meta_payload_not_12_plus_20n(n):
    with pytest.raises(WireError):
        decode(frame(wire.META, b"\x00" * n))


@pytest.mark.parametrize("n", [12, 32, 52])
def test_meta_payload_12_plus_20n_is_fine(n):
    (msg,) = decode(frame(wire.META, b"\x00" * n))
    assert len(msg.hashes) == (n - 12) // 20


@pytest.mark.parametrize("n", [1, 5, 7, 13])
def test_peers_payload_not_6n(n):
    with pytest.raises(WireError):
        decode(frame(wire.PEERS, b"\x00" * n))


@pytest.mark.parametrize("kind", [wire.GET_META, wire.STATUS_REQ], ids=lambda k: wire.NAMES[k])
def test_empty_kinds_with_payload(kind):
    with pytest.raises(WireError):
        decode(frame(kind, b"\x00"))
