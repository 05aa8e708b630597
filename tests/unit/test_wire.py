"""wire: every message kind round-trips through encode -> Decoder.feed, frames survive any split of
the byte stream, and a peer's malformed frame raises WireError (oversize ones from the header alone)."""

import struct

import pytest

from node import wire
from node.wire import (Bitfield, Decoder, GetMeta, Have, Hello, Meta, Peers, Pieces, Reject, Request,
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


@pytest.mark.parametrize("msg", ALL_KINDS, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    d = Decoder()
    assert d.feed(wire.encode(msg)) == [msg]
    assert d.pending == 0


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


STREAM = [Hello(b"\x02" * 8, 6881), Bitfield(b"\x0f"), Request(7, 3), Pieces(7, 3, b"x" * 30),
          Have(9, 1), Meta(10, 4, (b"a" * 20, b"b" * 20, b"c" * 20)), Peers((("10.0.0.9", 6881),)),
          GetMeta(), StatusRequest(), Status(b"{}"), Reject(1, 2)]


def test_frame_split_anywhere():
    data = wire.encode(Request(first=7, count=3)) + wire.encode(Have(9, 1))
    for cut in range(len(data) + 1):
        d = Decoder()
        got = d.feed(data[:cut]) + d.feed(data[cut:])
        assert got == [Request(7, 3), Have(9, 1)]


def test_long_stream_split_at_every_two_cuts():
    data = b"".join(wire.encode(m) for m in STREAM)
    for a in range(0, len(data) + 1, 3):
        for b in range(a, len(data) + 1, 7):
            d = Decoder()
            got = d.feed(data[:a]) + d.feed(data[a:b]) + d.feed(data[b:])
            assert got == STREAM
            assert d.pending == 0


def test_one_byte_at_a_time():
    data = b"".join(wire.encode(m) for m in STREAM)
    d = Decoder()
    got = []
    for i in range(len(data)):
        got += d.feed(data[i:i + 1])
    assert got == STREAM
    assert d.pending == 0


def test_two_frames_in_one_chunk():
    d = Decoder()
    assert d.feed(wire.encode(Have(1, 1)) + wire.encode(Have(2, 1))) == [Have(1, 1), Have(2, 1)]


def test_frame_and_a_half_keeps_the_half():
    first, second = wire.encode(Have(1, 1)), wire.encode(Request(4, 2))
    d = Decoder()
    assert d.feed(first + second[:6]) == [Have(1, 1)]
    assert d.pending == 6
    assert d.feed(second[6:]) == [Request(4, 2)]
    assert d.pending == 0


def test_truncated_frame_yields_nothing_and_pending_grows():
    data = wire.encode(Pieces(0, 1, b"z" * 100))
    d = Decoder()
    seen = 0
    for chunk in (data[:2], data[2:5], data[5:50], data[50:-1]):
        assert d.feed(chunk) == []
        seen += len(chunk)
        assert d.pending == seen
    assert d.feed(data[-1:]) == [Pieces(0, 1, b"z" * 100)]
    assert d.pending == 0


def test_empty_feed():
    d = Decoder()
    assert d.feed(b"") == []
    assert d.pending == 0


def test_feed_accepts_memoryview_and_bytearray():
    data = wire.encode(Have(3, 4))
    assert Decoder().feed(memoryview(data)) == [Have(3, 4)]
    assert Decoder().feed(bytearray(data)) == [Have(3, 4)]


def test_pieces_header_plus_data_is_a_pieces_frame():
    data = bytes(range(256)) * 3
    raw = wire.pieces_header(12, 3, len(data)) + data
    assert raw == wire.encode(Pieces(12, 3, data))
    assert Decoder().feed(raw) == [Pieces(12, 3, data)]


def test_largest_allowed_frame_of_a_fixed_kind_is_accepted():
    payload = bytes(wire.MAX_PAYLOAD[wire.PEERS])
    msgs = Decoder().feed(frame(wire.PEERS, payload))
    assert len(msgs) == 1 and len(msgs[0].addrs) == wire.MAX_PEERS_PER_FRAME


# -- a peer's mistakes ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(wire.MAX_PAYLOAD), ids=lambda k: wire.NAMES[k])
def test_oversize_frame_is_rejected_from_the_header_alone(kind):
    header = struct.pack(">IB", wire.MAX_PAYLOAD[kind] + 2, kind)  # one byte over
    d = Decoder()
    with pytest.raises(WireError):
        d.feed(header)


@pytest.mark.parametrize("kind", sorted(wire.MAX_PAYLOAD), ids=lambda k: wire.NAMES[k])
def test_max_length_header_is_not_rejected(kind):
    header = struct.pack(">IB", wire.MAX_PAYLOAD[kind] + 1, kind)
    d = Decoder()
    if wire.MAX_PAYLOAD[kind] == 0:
        d.feed(header)  # complete frame (GET_META / STATUS_REQ)
        assert d.pending == 0
    else:
        assert d.feed(header) == []
        assert d.pending == 5


def test_huge_length_is_rejected_before_the_payload_arrives():
    d = Decoder()
    with pytest.raises(WireError):
        d.feed(b"\xff\xff\xff\xff\x04")  # a 4 GiB PIECES frame


@pytest.mark.parametrize("kind", [11, 12, 99, 255])
def test_unknown_kind(kind):
    with pytest.raises(WireError):
        Decoder().feed(frame(kind, b""))


def test_length_zero_is_rejected():
    with pytest.raises(WireError):
        Decoder().feed(b"\x00\x00\x00\x00\x02")


def test_error_after_good_frames_in_the_same_chunk():
    with pytest.raises(WireError):
        Decoder().feed(wire.encode(Have(1, 1)) + b"\x00\x00\x00\x00\x02")


def test_hello_with_bad_magic():
    good = wire.encode(Hello(b"\x01" * 8, 6881))
    bad = good[:5] + b"XXXX" + good[9:]
    with pytest.raises(WireError):
        Decoder().feed(bad)


def test_hello_short_payload():
    with pytest.raises(WireError):
        Decoder().feed(frame(wire.HELLO, b"P2PS\x01" + b"\x00" * 10))


@pytest.mark.parametrize("kind", [wire.HAVE, wire.REQUEST, wire.REJECT], ids=lambda k: wire.NAMES[k])
@pytest.mark.parametrize("n", [0, 4, 7])
def test_range_payload_of_wrong_size(kind, n):
    with pytest.raises(WireError):
        Decoder().feed(frame(kind, b"\x00" * n))


@pytest.mark.parametrize("n", [0, 7])
def test_pieces_shorter_than_its_range(n):
    with pytest.raises(WireError):
        Decoder().feed(frame(wire.PIECES, b"\x00" * n))


@pytest.mark.parametrize("n", [0, 11, 13, 31, 12 + 19, 12 + 21])
def test_meta_payload_not_12_plus_20n(n):
    with pytest.raises(WireError):
        Decoder().feed(frame(wire.META, b"\x00" * n))


@pytest.mark.parametrize("n", [12, 32, 52])
def test_meta_payload_12_plus_20n_is_fine(n):
    (msg,) = Decoder().feed(frame(wire.META, b"\x00" * n))
    assert len(msg.hashes) == (n - 12) // 20


@pytest.mark.parametrize("n", [1, 5, 7, 13])
def test_peers_payload_not_6n(n):
    with pytest.raises(WireError):
        Decoder().feed(frame(wire.PEERS, b"\x00" * n))


@pytest.mark.parametrize("kind", [wire.GET_META, wire.STATUS_REQ], ids=lambda k: wire.NAMES[k])
def test_empty_kinds_with_payload(kind):
    with pytest.raises(WireError):
        Decoder().feed(frame(kind, b"\x00"))
