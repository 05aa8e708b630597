"""session: the one receive path (frames split anywhere, the buffer grows and compacts), the
legality table (what a peer may send when), and a pair test after h11's ConnectionPair: two
sessions joined by byte buffers run a whole conversation with no sockets at all."""

import hashlib

import pytest

from node import wire
from node.config import FileInfo
from node.picker import span_bits
from node.session import (MAX_PEER_REQUESTS, NEED_DATA, READ_AHEAD, RULES, Chunk, Closed, Phase, Reason,
                          Session)
from node.wire import (Bitfield, GetMeta, Have, Hello, Meta, Peers, Reject, Request, Status, StatusRequest,
                       WireError)

DATA = bytes(range(256)) * 10  # 2560 bytes
PIECE = 160
INFO = FileInfo(len(DATA), PIECE, tuple(hashlib.sha1(DATA[i:i + PIECE]).digest()
                                        for i in range(0, len(DATA), PIECE)))  # 16 pieces
FULL = (1 << INFO.n_pieces) - 1


def new(info=INFO, port=6881, chunk_pieces=2, node_id=b"ours-id!"):
    return Session(Hello(node_id, port, info.meta_id if info else wire.NO_META), info, chunk_pieces)


def opened(info=INFO, peer_meta=None, chunk_pieces=2):
    s = new(info, chunk_pieces=chunk_pieces)
    meta = INFO.meta_id if peer_meta is None else peer_meta
    (hello,) = s.feed(wire.encode(Hello(b"peer-id!", 7000, meta)))
    assert hello.port == 7000 and s.phase is Phase.OPEN
    return s


def norm(events):
    """Chunks as comparable tuples (their views are only valid until the buffer is reused)."""
    return [("chunk", e.first, e.count, bytes(e.view), e.done) if type(e) is Chunk else e for e in events]


def pieces(first, count):
    offset, n = INFO.span(first, count)
    return wire.pieces_header(first, count, n) + DATA[offset:offset + n]


def stream_session():
    """An open session that requested 7+3 and 1+2 of its peer, and the bytes of a conversation
    with every kind a peer may send unasked, with the events they must give."""
    s = opened()
    s.request(7, 3, now=0.0)
    s.request(1, 2, now=0.0)
    msgs = [Bitfield(b"\x0f\x00"), Request(4, 2), Have(9, 1), Peers((("10.0.0.9", 6881),)),
            GetMeta(), StatusRequest(), Reject(1, 2)]
    data = b"".join(wire.encode(m) for m in msgs[:2]) + pieces(7, 3) + b"".join(wire.encode(m) for m in msgs[2:])
    events = msgs[:2] + [("chunk", 7, 2, DATA[7 * PIECE:9 * PIECE], None),
                         ("chunk", 9, 1, DATA[9 * PIECE:10 * PIECE], 7)] + msgs[2:]
    return s, data, events


# -- the receive path ---------------------------------------------------------------------------

def test_frames_split_at_every_point_give_the_same_events():
    _, data, want = stream_session()
    for cut in range(len(data) + 1):
        s, _, _ = stream_session()
        assert norm(s.feed(data[:cut]) + s.feed(data[cut:])) == want
        assert s.pending == 0


def test_one_byte_at_a_time():
    s, data, want = stream_session()
    got = []
    for i in range(len(data)):
        got += norm(s.feed(data[i:i + 1]))
    assert got == want


def test_two_frames_in_one_read_and_a_half_frame_kept():
    s = opened()
    first, second = wire.encode(Have(1, 1)) + wire.encode(Have(2, 1)), wire.encode(Request(4, 2))
    assert s.feed(first + second[:6]) == [Have(1, 1), Have(2, 1)]
    assert s.pending == 6
    assert s.feed(second[6:]) == [Request(4, 2)]
    assert s.pending == 0


def test_truncated_frame_yields_nothing_until_its_last_byte():
    s = opened()
    data = wire.encode(Peers(tuple((f"10.0.0.{i}", 6881) for i in range(40))))
    for i in range(len(data) - 1):
        assert s.feed(data[i:i + 1]) == []
    assert s.feed(data[-1:]) == [Peers(tuple((f"10.0.0.{i}", 6881) for i in range(40)))]


def test_piece_data_goes_straight_into_the_chunk_buffer():
    s = opened()
    s.request(0, 4, now=0.0)
    s.recv_view()[:13] = pieces(0, 4)[:13]  # header and range only: no piece bytes read ahead
    s.received(13, now=1.0)
    buf = bytearray(s.chunk_bytes)
    assert s.next_event() == "NEED_BUFFER"
    s.give_buffer(buf)
    assert s.next_event() is NEED_DATA
    view = s.recv_view()
    assert view.obj is buf and len(view) == 2 * PIECE  # zero-copy: recv_into the chunk itself
    view[:100] = DATA[:100]
    assert s.received(100, now=1.0) is True  # the chunk wants more: the reader recvs again at once
    view = s.recv_view()
    assert len(view) == 2 * PIECE - 100
    view[:] = DATA[100:2 * PIECE]
    assert s.received(2 * PIECE - 100, now=1.0) is False  # full: look for the event
    chunk = s.next_event()
    assert (chunk.first, chunk.count, chunk.buf is buf, bytes(chunk.view), chunk.done) == (
        0, 2, True, DATA[:2 * PIECE], None)


def test_read_ahead_grows_for_a_big_frame_and_never_reads_past_a_small_one():
    s = opened(info=None)
    bits = bytes([0xA5]) * (3 * READ_AHEAD)
    data = wire.encode(Have(1, 1)) + wire.encode(Bitfield(bits)) + wire.encode(Have(2, 1))
    got = []
    for i in range(0, len(data), 1000):
        got += s.feed(data[i:i + 1000])
    assert got == [Have(1, 1), Bitfield(bits), Have(2, 1)]
    assert len(s.recv_view()) == READ_AHEAD  # after the big frame, reads are small again


def test_error_after_good_frames_in_the_same_read():
    s = opened()
    with pytest.raises(WireError):
        s.feed(wire.encode(Have(1, 1)) + b"\x00\x00\x00\x00\x02")


# -- the legality table ------------------------------------------------------------------------

def test_every_kind_has_a_rule():
    assert set(RULES) == set(wire.MAX_PAYLOAD)


@pytest.mark.parametrize("msg", [Bitfield(b"\x01\x00"), Have(0, 1), Request(0, 1), Reject(0, 1), GetMeta(),
                                 Peers(()), StatusRequest()], ids=lambda m: type(m).__name__)
def test_nothing_but_hello_first(msg):
    with pytest.raises(WireError, match="handshake"):
        new().feed(wire.encode(msg))


def test_a_second_hello_is_an_error():
    with pytest.raises(WireError):
        opened().feed(wire.encode(Hello(b"peer-id!", 7000)))


def test_hello_of_another_file_or_version_ends_the_link():
    with pytest.raises(Closed) as e:
        new().feed(wire.encode(Hello(b"peer-id!", 7000, b"\x01" * 20)))
    assert e.value.reason is Reason.OTHER_FILE
    with pytest.raises(Closed) as e:
        new().feed(wire.encode(Hello(b"peer-id!", 7000, version=2)))
    assert e.value.reason is Reason.VERSION


@pytest.mark.parametrize("msg", [Meta(INFO.size, PIECE, INFO.hashes), Status(b"{}")],
                         ids=lambda m: type(m).__name__)
def test_answers_we_did_not_ask_for_are_errors(msg):
    with pytest.raises(WireError, match="unsolicited"):
        opened(info=None).feed(wire.encode(msg))


def test_pieces_only_exactly_as_requested_and_once():
    with pytest.raises(WireError, match="not requested"):
        opened().feed(pieces(0, 1))
    s = opened()
    s.request(0, 2, now=0.0)
    with pytest.raises(WireError, match="not requested"):
        s.feed(pieces(0, 1))  # a different count
    s = opened()
    s.request(0, 1, now=0.0)
    s.feed(pieces(0, 1))
    with pytest.raises(WireError, match="not requested"):
        s.feed(pieces(0, 1))  # arrived already
    s = opened()
    s.request(15, 1, now=0.0)
    with pytest.raises(WireError, match="carry"):
        s.feed(wire.pieces_header(15, 1, PIECE + 1) + bytes(PIECE + 1))


@pytest.mark.parametrize("msg", [Have(16, 1), Have(0, 0), Request(15, 2), Request(2 ** 32 - 1, 1)],
                         ids=str)
def test_ranges_outside_the_file(msg):
    with pytest.raises(WireError, match="outside"):
        opened().feed(wire.encode(msg))


def test_a_peer_may_have_only_so_many_requests_unanswered():
    s = opened()
    assert len(s.feed(wire.encode(Request(0, 1)) * MAX_PEER_REQUESTS)) == MAX_PEER_REQUESTS
    s.reject(0, 1)  # one answered: room for one more
    s.feed(wire.encode(Request(0, 1)))
    with pytest.raises(WireError, match="unanswered"):
        s.feed(wire.encode(Request(0, 1)))


def test_metadata_must_match_the_peers_hello():
    other = FileInfo(INFO.size, INFO.piece_size, INFO.hashes[:-1] + (bytes(20),))
    s = opened(info=None, peer_meta=INFO.meta_id)
    s.ask_meta()
    with pytest.raises(WireError, match="does not match"):
        s.feed(wire.encode(Meta(other.size, other.piece_size, other.hashes)))


def test_metadata_that_is_not_a_file_is_an_error():
    s = opened(info=None, peer_meta=wire.NO_META)
    s.feed(wire.encode(Bitfield(b"\x01")))  # knows the file
    s.ask_meta()
    with pytest.raises(WireError, match="bad metadata"):
        s.feed(wire.encode(Meta(100, 10, (bytes(20),))))  # 100/10 needs 10 hashes


# -- a pair of sessions, back to back -----------------------------------------------------------

class Pair:
    """Two sessions joined by byte buffers: `a` holds the file, `b` starts without FileInfo."""

    def __init__(self):
        self.a = new(INFO, port=6881, node_id=b"node-aaa")
        self.b = new(None, port=6882, node_id=b"node-bbb")

    def to_a(self, *frames):
        return norm(self.a.feed(b"".join(frames)))

    def to_b(self, *frames):
        return norm(self.b.feed(b"".join(frames)))


def test_pair_conversation():
    p = Pair()
    # handshake: both send HELLO first; b learns that a knows the file
    assert [type(e) for e in p.to_a(p.b.greeting)] == [Hello]
    assert [type(e) for e in p.to_b(p.a.greeting)] == [Hello]
    assert p.a.listen_port == 6882 and p.b.listen_port == 6881 and p.b.knows_file
    # metadata exchange: asked once, answered, checked against a's HELLO
    ask = p.b.ask_meta()
    assert p.b.ask_meta() == []
    assert p.to_a(*ask) == [GetMeta()]
    (info,) = p.to_b(wire.encode(Meta(INFO.size, INFO.piece_size, INFO.hashes)))
    assert info == INFO
    p.b.set_info(info, chunk_pieces=2)
    # bitfield, then only what is new
    assert p.to_b(*p.a.announce(FULL, complete=True)) == [Bitfield(FULL.to_bytes(2, "little"))]
    assert p.b.peer_has == FULL and p.a.announce(FULL, complete=True) == []
    assert p.to_a(*p.b.announce(0, complete=False)) == [Bitfield(bytes(2))]
    assert p.b.announce(0b1, complete=False) == []  # a holds it: it would never ask, so not told
    # requests and pieces, in chunks of 2 pieces
    assert p.to_a(p.b.request(0, 3, now=0.0)) == [Request(0, 3)]
    assert p.a.serving == 1
    p.a.answered()
    got = p.b.feed(pieces(0, 3))
    assert [(c.first, c.count, bytes(c.view), c.done) for c in got] == [
        (0, 2, DATA[:2 * PIECE], None), (2, 1, DATA[2 * PIECE:3 * PIECE], 0)]
    assert p.b.mine_bits == span_bits(0, 3)  # ours until verified
    for c in got:
        p.b.chunk_done(c)
    assert p.b.mine == {} and p.b.mine_bits == 0
    # a reject gives the claim back; the peer still holds the piece (it may only be busy)
    p.b.request(3, 1, now=0.0)
    assert p.to_a(p.b.request(4, 1, now=0.0))[-1] == Request(4, 1)
    assert p.to_b(p.a.reject(4, 1)) == [Reject(4, 1)]
    assert 4 not in p.b.mine and not p.b.mine_bits >> 4 & 1 and p.b.peer_has >> 4 & 1
    assert p.to_b(p.a.reject(4, 1)) == []  # stale: nothing to act on
    # peer exchange: each address told once
    addrs = [("10.0.0.2", 6881), ("10.0.0.3", 6881)]
    assert p.to_b(*p.a.share_peers(addrs, version=1)) == [Peers(tuple(addrs))]
    assert p.a.share_peers(addrs, version=2) == [] and p.a.peers_version == 2
    # status, for a client
    assert p.to_a(p.b.ask_status()) == [StatusRequest()]
    assert p.to_b(wire.encode(Status(b'{"have": 16}'))) == [Status(b'{"have": 16}')]
    # deadlines: 3+1 outstanding, overdue only once its time has passed
    assert not p.b.overdue(now=1.0) and p.b.overdue(now=100.0)
    # close: what we had asked for and not got comes back, to release
    assert p.b.close() == span_bits(3, 1) and p.b.phase is Phase.CLOSED


def test_peer_exchange_sends_each_address_once_and_a_long_list_in_frames():
    s = opened()
    first = [("10.0.%d.%d" % (i >> 8, i & 255), 6881) for i in range(3)]
    (frame,) = s.share_peers(first, version=3)
    assert wire.decode_payload(wire.PEERS, frame[wire.HEADER.size:]).addrs == tuple(first)
    assert s.peers_version == 3
    # the node's list grew: only the new part is passed, and one already told is not repeated
    assert s.share_peers([first[0]], version=4) == [] and s.peers_version == 4
    many = [("10.1.%d.%d" % (i >> 8, i & 255), 6881) for i in range(wire.MAX_PEERS_PER_FRAME + 5)]
    (frame,) = s.share_peers(many, version=4 + len(many))
    assert len(wire.decode_payload(wire.PEERS, frame[wire.HEADER.size:]).addrs) == wire.MAX_PEERS_PER_FRAME
    assert s.peers_version == 4  # not all told: the caller passes the same part again
    (frame,) = s.share_peers(many, version=4 + len(many))
    assert wire.decode_payload(wire.PEERS, frame[wire.HEADER.size:]).addrs == tuple(many[-5:])
    assert s.peers_version == 4 + len(many)
