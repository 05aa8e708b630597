"""The peer protocol's bytes, sans-IO: messages are small immutable tuples, `encode(msg) -> bytes`,
`decode_header` and `decode_payload` turn bytes back into them. What a peer may send when, and the
one receive buffer every peer byte goes through, live in `session.py`; `conn.py` moves the bytes.

Rule: every byte layout lives here, and a peer's mistake raises `WireError` (the caller closes that
one connection); a bug of ours raises anything else and fails loudly.

Frame (all integers big-endian):

    +---------------+-----------+-------------------------+
    | length u32    | kind u8   | payload (length-1 bytes)|
    +---------------+-----------+-------------------------+

`length` counts the kind byte and the payload. Each kind has a maximum payload (MAX_PAYLOAD); a frame
over it is rejected from its 5-byte header alone, before any payload is buffered.

| kind | name       | payload                                                        | max bytes |
|------|------------|----------------------------------------------------------------|-----------|
| 0    | HELLO      | magic "P2PS" | version u8 | node_id 8B | port u16 | meta_id 20B | 35        |
| 1    | BITFIELD   | bit i (byte i//8, bit i%8, LSB first) set = piece i held       | 512 KiB   |
| 2    | HAVE       | first u32 | count u32: pieces first..first+count-1 now held     | 8         |
| 3    | REQUEST    | first u32 | count u32: send me these consecutive pieces        | 8         |
| 4    | PIECES     | first u32 | count u32 | the pieces' bytes, concatenated        | 64 MiB+8  |
| 5    | REJECT     | first u32 | count u32: I will not send these (not held)        | 8         |
| 6    | GET_META   | (empty): send me the file's metadata                           | 0         |
| 7    | META       | size u64 | piece_size u32 | SHA-1 of each piece, 20B each      | 80 MiB+12 |
| 8    | PEERS      | repeated: IPv4 4B | port u16 (addresses the sender knows)      | 6 KiB     |
| 9    | STATUS_REQ | (empty): send me your status                                   | 0         |
| 10   | STATUS     | UTF-8 JSON object                                              | 64 KiB    |

meta_id is SHA-1(b"%d:%d:" % (size, piece_size) + all piece hashes), or 20 zero bytes when the sender
does not know the file yet. Both sides send HELLO first; see docs/PROTOCOL.md for the conversation.
"""

import struct
from collections import namedtuple
from socket import AF_INET, inet_ntoa, inet_pton  # pure conversions, no I/O

MAGIC = b"P2PS"
VERSION = 1
NO_META = bytes(20)

HELLO, BITFIELD, HAVE, REQUEST, PIECES, REJECT, GET_META, META, PEERS, STATUS_REQ, STATUS = range(11)
NAMES = ("hello", "bitfield", "have", "request", "pieces", "reject", "get_meta", "meta", "peers",
         "status_req", "status")

HEADER = struct.Struct(">IB")
RANGE = struct.Struct(">II")
_RANGE_FRAME = struct.Struct(">IBII")  # a whole HAVE, REQUEST or REJECT frame
_HELLO = struct.Struct(">4sB8sH20s")
_META = struct.Struct(">QI")
_ADDR = struct.Struct(">4sH")

MAX_PEERS_PER_FRAME = 1024  # PEX is a hint; more than this many addresses at once is noise
MAX_PAYLOAD = {
    HELLO: _HELLO.size,
    BITFIELD: (1 << 22) // 8,
    HAVE: RANGE.size,
    REQUEST: RANGE.size,
    PIECES: RANGE.size + (64 << 20),
    REJECT: RANGE.size,
    GET_META: 0,
    META: _META.size + 20 * (1 << 22),
    PEERS: _ADDR.size * MAX_PEERS_PER_FRAME,
    STATUS_REQ: 0,
    STATUS: 64 << 10,
}


class WireError(Exception):
    """The peer broke the protocol: close that connection."""


def _message(name, fields, defaults=None):
    """An immutable message type. Unlike a bare namedtuple, Have(1, 2) != Request(1, 2): equal
    only to a message of the same kind. Tuples, not dataclasses: 11 dataclasses cost every node
    process 20 ms of CPU at start-up."""
    base = namedtuple(name, fields, defaults=defaults)
    return type(name, (base,), {
        "__slots__": (),
        "__eq__": lambda a, b: type(a) is type(b) and tuple.__eq__(a, b),
        "__ne__": lambda a, b: not (type(a) is type(b) and tuple.__eq__(a, b)),
        "__hash__": lambda a: hash((type(a).__name__, tuple(a))),
    })


Hello = _message("Hello", "node_id port meta_id version", defaults=(NO_META, VERSION))
Bitfield = _message("Bitfield", "bits")
Have = _message("Have", "first count")
Request = _message("Request", "first count")
Pieces = _message("Pieces", "first count data")
Reject = _message("Reject", "first count")
GetMeta = _message("GetMeta", "")
Meta = _message("Meta", "size piece_size hashes")  # hashes: tuple of 20-byte SHA-1 digests
Peers = _message("Peers", "addrs")  # ("10.0.0.2", 6881) pairs
StatusRequest = _message("StatusRequest", "")
Status = _message("Status", "body")  # UTF-8 JSON


def frame(kind, payload=b""):
    return HEADER.pack(len(payload) + 1, kind) + payload


def pieces_header(first, count, nbytes):
    """Header of a PIECES frame whose nbytes of piece data the caller sends itself (sendfile)."""
    return HEADER.pack(1 + RANGE.size + nbytes, PIECES) + RANGE.pack(first, count)


def encode(msg):
    t = type(msg)
    if t in _RANGE_KINDS:  # the frequent kinds first
        return _RANGE_FRAME.pack(1 + RANGE.size, _RANGE_KINDS[t], msg.first, msg.count)
    if t is Hello:
        return frame(HELLO, _HELLO.pack(MAGIC, msg.version, msg.node_id, msg.port, msg.meta_id))
    if t is Bitfield:
        return frame(BITFIELD, bytes(msg.bits))
    if t is Pieces:
        return pieces_header(msg.first, msg.count, len(msg.data)) + bytes(msg.data)
    if t is GetMeta:
        return frame(GET_META)
    if t is Meta:
        return frame(META, _META.pack(msg.size, msg.piece_size) + b"".join(msg.hashes))
    if t is Peers:
        return frame(PEERS, b"".join(_ADDR.pack(inet_pton(AF_INET, ip), port) for ip, port in msg.addrs))
    if t is StatusRequest:
        return frame(STATUS_REQ)
    if t is Status:
        return frame(STATUS, msg.body)
    raise TypeError(f"not a message: {msg!r}")


_RANGE_KINDS = {Have: HAVE, Request: REQUEST, Reject: REJECT}
_RANGE_TYPES = {HAVE: Have, REQUEST: Request, REJECT: Reject}


def decode_header(buf, offset=0):
    """The 5 header bytes at buf[offset:] -> (kind, payload length). Checks the kind and its size limit."""
    length, kind = HEADER.unpack_from(buf, offset)
    if length == 0:
        raise WireError("frame length 0 (no kind byte)")
    limit = MAX_PAYLOAD.get(kind)
    if limit is None:
        raise WireError(f"unknown message kind {kind}")
    if length - 1 > limit:
        raise WireError(f"{NAMES[kind]} frame of {length - 1} bytes exceeds {limit}")
    return kind, length - 1


def _exact(kind, payload, n):
    if len(payload) != n:
        raise WireError(f"{NAMES[kind]} payload is {len(payload)} bytes, expected {n}")


def decode_payload(kind, payload):
    """Payload of a frame whose header `decode_header` accepted -> message."""
    cls = _RANGE_TYPES.get(kind)
    if cls is not None:  # the frequent kinds first
        if len(payload) != RANGE.size:
            _exact(kind, payload, RANGE.size)
        return cls(*RANGE.unpack(payload))
    if kind == HELLO:
        _exact(kind, payload, _HELLO.size)
        magic, version, node_id, port, meta_id = _HELLO.unpack(payload)
        if magic != MAGIC:
            raise WireError(f"bad magic {bytes(magic)!r}")
        return Hello(bytes(node_id), port, bytes(meta_id), version)
    if kind == BITFIELD:
        return Bitfield(bytes(payload))
    if kind == PIECES:
        if len(payload) < RANGE.size:
            raise WireError("pieces payload shorter than its range header")
        first, count = RANGE.unpack_from(payload)
        return Pieces(first, count, bytes(payload[RANGE.size:]))
    if kind == META:
        if len(payload) < _META.size or (len(payload) - _META.size) % 20:
            raise WireError(f"meta payload of {len(payload)} bytes is not 12 + 20*n")
        size, piece_size = _META.unpack_from(payload)
        body = bytes(payload[_META.size:])
        return Meta(size, piece_size, tuple(body[i:i + 20] for i in range(0, len(body), 20)))
    if kind == PEERS:
        if len(payload) % _ADDR.size:
            raise WireError(f"peers payload of {len(payload)} bytes is not 6*n")
        return Peers(tuple((inet_ntoa(ip), port) for ip, port in _ADDR.iter_unpack(payload)))
    if kind == STATUS:
        return Status(bytes(payload))
    _exact(kind, payload, 0)
    return GetMeta() if kind == GET_META else StatusRequest()
