"""Property tests (hypothesis, bounded): whatever a peer or an operator sends, the codecs either
return a well-formed result or raise their own error (WireError, BeaconError, ConfigError), never
another exception; the wire decoder never buffers more than one allowed frame, and its output does
not depend on how the byte stream is chunked."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import beacon, config, wire
from node.config import ConfigError, FileInfo
from node.wire import Decoder, WireError

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LARGEST_FRAME = wire.HEADER.size + max(wire.MAX_PAYLOAD.values())
MESSAGE_TYPES = (wire.Hello, wire.Bitfield, wire.Have, wire.Request, wire.Pieces, wire.Reject,
                 wire.GetMeta, wire.Meta, wire.Peers, wire.StatusRequest, wire.Status)

# -- wire -----------------------------------------------------------------------------------------

u32 = st.integers(min_value=0, max_value=2 ** 32 - 1)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
messages = st.one_of(
    st.builds(wire.Hello, st.binary(min_size=8, max_size=8), st.integers(0, 65535),
              st.binary(min_size=20, max_size=20), st.integers(0, 255)),
    st.builds(wire.Bitfield, st.binary(max_size=64)),
    st.builds(wire.Have, u32, u32),
    st.builds(wire.Request, u32, u32),
    st.builds(wire.Reject, u32, u32),
    st.builds(wire.Pieces, u32, u32, st.binary(max_size=300)),
    st.just(wire.GetMeta()),
    st.builds(wire.Meta, st.integers(0, 2 ** 64 - 1), u32,
              st.lists(st.binary(min_size=20, max_size=20), max_size=5).map(tuple)),
    st.builds(wire.Peers, st.lists(st.tuples(ipv4, st.integers(0, 65535)), max_size=5).map(tuple)),
    st.just(wire.StatusRequest()),
    st.builds(wire.Status, st.binary(max_size=100)),
)


def chunked(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def decode_in_chunks(data, cuts):
    """(messages decoded before any error, raised WireError or None); checks the buffer bound."""
    d = Decoder()
    got = []
    for chunk in chunked(data, cuts):
        try:
            msgs = d.feed(chunk)
        except WireError as e:
            return got, e
        assert all(isinstance(m, MESSAGE_TYPES) for m in msgs)
        got += msgs
        assert d.pending <= LARGEST_FRAME
    return got, None


@FUZZ
@given(st.lists(messages, max_size=6), st.lists(st.integers(min_value=0), max_size=8))
def test_any_messages_any_chunking_round_trip(msgs, cuts):
    data = b"".join(wire.encode(m) for m in msgs)
    got, err = decode_in_chunks(data, cuts)
    assert err is None
    assert got == msgs


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=8))
def test_random_bytes_only_raise_wire_error(data, cuts):
    decode_in_chunks(data, cuts)


@st.composite
def mutated_streams(draw):
    """Valid frames with a few bytes overwritten: reaches the payload checks, not only the header."""
    data = bytearray(b"".join(wire.encode(m) for m in draw(st.lists(messages, min_size=1, max_size=4))))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(mutated_streams(), st.lists(st.integers(min_value=0), max_size=8))
def test_mutated_frames_only_raise_wire_error_whatever_the_chunking(data, cuts):
    chunked_got, chunked_err = decode_in_chunks(data, cuts)
    whole_got, whole_err = decode_in_chunks(data, [])
    assert (chunked_err is None) == (whole_err is None)
    if whole_err is None:
        assert chunked_got == whole_got


@FUZZ
@given(st.sampled_from(sorted(wire.MAX_PAYLOAD)), st.integers(min_value=0, max_value=2 ** 32 - 1))
def test_header_alone_decides_oversize(kind, length):
    header = wire.HEADER.pack(length, kind)
    d = Decoder()
    if length == 0 or length - 1 > wire.MAX_PAYLOAD[kind]:
        try:
            d.feed(header)
        except WireError:
            return
        raise AssertionError(f"length {length} accepted for {wire.NAMES[kind]}")
    try:
        d.feed(header)
    except WireError:
        assert length == 1  # a complete, empty payload that this kind does not allow
    assert d.pending <= LARGEST_FRAME


# -- beacon ---------------------------------------------------------------------------------------

@FUZZ
@given(st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=beacon.SIZE, max_size=beacon.SIZE),
    st.builds(lambda tail: b"P2PB" + tail, st.binary(min_size=12, max_size=12)),
    st.builds(lambda kind, inst, port: beacon.encode(kind, inst, port),
              st.integers(0, 255), st.binary(min_size=8, max_size=8), st.integers(0, 65535)),
))
def test_beacon_decode_only_raises_beacon_error(data):
    try:
        b = beacon.decode(data)
    except beacon.BeaconError:
        return
    assert b.kind in (beacon.ANNOUNCE, beacon.PROBE, beacon.REPLY)
    assert len(b.instance) == 8
    assert 0 < b.port < 65536
    assert beacon.encode(b.kind, b.instance, b.port) == bytes(data)


# -- config ---------------------------------------------------------------------------------------

KEYS = st.sampled_from(["Peers", "FileInfo", "Size", "PartSize", "Parts"]) | st.text(max_size=8)
json_leaves = (st.none() | st.booleans() | st.integers() | st.integers(-2 ** 80, 2 ** 80)
               | st.floats(allow_nan=False) | st.text(max_size=20))
json_values = st.recursive(json_leaves, lambda kids: st.lists(kids, max_size=5)
                           | st.dictionaries(KEYS, kids, max_size=5), max_leaves=25)
peer_text = (st.text(alphabet="0123456789.:abx ²٣\n-", max_size=20)
             | st.builds(lambda host, port: f"{host}:{port}", st.sampled_from(["10.0.0.2", "h", ""]),
                         st.text(alphabet="0123456789²٣x", max_size=6)))
hex40 = st.text(alphabet="0123456789abcdefABCDEFg ", min_size=38, max_size=42)
small_int = st.integers(-3, 70)
file_infos = st.fixed_dictionaries({
    "Size": small_int | json_leaves,
    "PartSize": small_int | json_leaves,
    "Parts": st.none() | st.lists(hex40 | json_leaves, max_size=6) | json_leaves,
})
confs = st.fixed_dictionaries({}, optional={
    "Peers": st.none() | st.lists(peer_text | json_leaves, max_size=4) | json_values,
    "FileInfo": st.none() | file_infos | json_values,
})


def check_parse(text):
    try:
        peers, info = config.parse_torrent_conf(text)
    except ConfigError as e:
        assert isinstance(e.field, str) and e.field
        assert "\n" not in str(e) and "\r" not in str(e)
        return
    assert isinstance(peers, tuple)
    for host, port in peers:
        assert isinstance(host, str) and host and not any(c.isspace() for c in host)
        assert isinstance(port, int) and 0 < port < 65536
    assert info is None or isinstance(info, FileInfo)
    if info is not None:
        assert info.n_pieces == -(-info.size // info.piece_size)
        assert all(len(h) == 20 for h in info.hashes)


@FUZZ
@given(json_values)
def test_any_json_value_as_conf(value):
    check_parse(json.dumps(value))


@FUZZ
@given(confs)
def test_conf_shaped_json(value):
    check_parse(json.dumps(value))


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_random_text_as_conf(text):
    check_parse(text)


@FUZZ
@given(st.integers(0, 5000), st.integers(1, 700), st.data())
def test_valid_file_info_round_trips(size, piece_size, data):
    n = -(-size // piece_size)
    parts = [data.draw(st.binary(min_size=20, max_size=20)).hex() for _ in range(n)]
    fi = {"Size": size, "PartSize": piece_size, "Parts": parts}
    _, info = config.parse_torrent_conf(json.dumps({"FileInfo": fi}))
    assert info.to_json() == fi
    assert sum(info.piece_len(i) for i in range(n)) == size
    assert info.span(0, n) == (0, size)
