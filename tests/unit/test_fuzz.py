"""Property tests (hypothesis, bounded): whatever a peer or an operator sends, the codecs either
return a well-formed result or raise their own error (WireError, BeaconError, ConfigError), never
another exception. Peer bytes go through the session's receive path, the one real links use:
its output does not depend on how the byte stream is split into reads, and its buffer never
holds more than one allowed frame. `HYPOTHESIS_PROFILE=deep` (make fuzz) runs 10^5 inputs each."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import beacon, config, wire
from node.config import ConfigError, FileInfo
from node.session import NEED_BUFFER, NEED_DATA, READ_AHEAD, Chunk, Closed, Session
from node.wire import WireError

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RECEIVE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # examples: profile
LARGEST_CONTROL_FRAME = wire.HEADER.size + max(n for k, n in wire.MAX_PAYLOAD.items() if k != wire.PIECES)
PIECE = 64
INFO = FileInfo(16 * PIECE - 7, PIECE, tuple(bytes([i]) * 20 for i in range(16)))
REQUESTED = ((0, 2), (4, 3), (15, 1))  # what the fuzzed session asked its peer for

# -- the receive path -----------------------------------------------------------------------------

u32 = st.integers(min_value=0, max_value=2 ** 32 - 1)
small = st.integers(min_value=0, max_value=20)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
messages = st.one_of(
    st.builds(wire.Hello, st.binary(min_size=8, max_size=8), st.integers(0, 65535),
              st.sampled_from([wire.NO_META, INFO.meta_id, bytes(range(20))]), st.integers(0, 2)),
    st.builds(wire.Bitfield, st.binary(max_size=64)),
    st.builds(wire.Have, small | u32, small | u32),
    st.builds(wire.Request, small | u32, small | u32),
    st.builds(wire.Reject, small | u32, small | u32),
    st.builds(wire.Pieces, small | u32, small | u32, st.binary(max_size=300)),
    st.just(wire.GetMeta()),
    st.just(wire.Meta(INFO.size, INFO.piece_size, INFO.hashes)),
    st.builds(wire.Meta, st.integers(0, 2 ** 64 - 1), u32,
              st.lists(st.binary(min_size=20, max_size=20), max_size=5).map(tuple)),
    st.builds(wire.Peers, st.lists(st.tuples(ipv4, st.integers(0, 65535)), max_size=5).map(tuple)),
    st.just(wire.StatusRequest()),
    st.builds(wire.Status, st.binary(max_size=100)),
)
requested_pieces = st.sampled_from(REQUESTED).map(
    lambda r: wire.Pieces(r[0], r[1], bytes(INFO.span(*r)[1])))
frames = st.one_of(messages, requested_pieces).map(wire.encode)
HELLO = wire.encode(wire.Hello(b"peer-id!", 7000, INFO.meta_id))


def fuzzed_session(knows_file):
    """Asked for REQUESTED (knowing the file) or for the metadata (not), and for a status."""
    s = Session(wire.Hello(b"ours-id!", 6881, INFO.meta_id if knows_file else wire.NO_META),
                INFO if knows_file else None, chunk_pieces=2)
    s.feed(HELLO)
    if knows_file:
        for first, count in REQUESTED:
            s.request(first, count, now=0.0)
    else:
        s.ask_meta()
    s.ask_status()
    return s


def chunked(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def receive(data, cuts, knows_file=True):
    """(events before any error, as comparable values; the error's type or None), read the way
    conn.Conn reads: each recv into recv_view(), then events until NEED_DATA."""
    s = fuzzed_session(knows_file)
    got = []
    for piece in chunked(data, cuts):
        piece = memoryview(piece)
        try:
            while True:
                ev = s.next_event()
                if ev is NEED_DATA:
                    if not piece:
                        break
                    view = s.recv_view()
                    k = min(len(view), len(piece))
                    view[:k], piece = piece[:k], piece[k:]
                    s.received(k, now=0.0)
                elif ev is NEED_BUFFER:
                    s.give_buffer(bytearray(s.chunk_bytes))
                else:
                    assert isinstance(ev, (Chunk, FileInfo)) or type(ev) in vars(wire).values()
                    got.append(("chunk", ev.first, ev.count, bytes(ev.view), ev.done)
                               if type(ev) is Chunk else ev)
        except (WireError, Closed) as e:
            return got, type(e)
        assert s.pending <= LARGEST_CONTROL_FRAME
        assert len(s._buf) <= max(READ_AHEAD, 2 * LARGEST_CONTROL_FRAME)
    return got, None


@RECEIVE
@given(st.lists(frames, max_size=8), st.lists(st.integers(min_value=0), max_size=8), st.booleans())
def test_any_frames_any_reads_give_the_same_events(stream, cuts, knows_file):
    data = b"".join(stream)
    assert receive(data, cuts, knows_file) == receive(data, [], knows_file)


@RECEIVE
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=8), st.booleans())
def test_random_bytes_only_raise_wire_errors(data, cuts, knows_file):
    receive(HELLO + data, cuts, knows_file)
    receive(data, cuts, knows_file)


@st.composite
def mutated_streams(draw):
    """Valid frames with a few bytes overwritten: reaches the payload checks, not only the header."""
    data = bytearray(b"".join(draw(st.lists(frames, min_size=1, max_size=4))))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


@RECEIVE
@given(mutated_streams(), st.lists(st.integers(min_value=0), max_size=8), st.booleans())
def test_mutated_frames_only_raise_wire_errors_whatever_the_reads(data, cuts, knows_file):
    assert receive(data, cuts, knows_file) == receive(data, [], knows_file)


@FUZZ
@given(st.sampled_from(sorted(wire.MAX_PAYLOAD)), st.integers(min_value=0, max_value=2 ** 32 - 1))
def test_header_alone_decides_oversize(kind, length):
    header = wire.HEADER.pack(length, kind)
    if length == 0 or length - 1 > wire.MAX_PAYLOAD[kind]:
        try:
            wire.decode_header(header)
        except WireError:
            return
        raise AssertionError(f"length {length} accepted for {wire.NAMES[kind]}")
    assert wire.decode_header(header) == (kind, length - 1)


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
