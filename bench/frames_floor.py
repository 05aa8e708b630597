"""The floor under bench/frames.py: the same traffic answered with no node logic at all.

    python3 bench/frames_floor.py gevent|selectors --bind IP --port PORT

It says HELLO on each link, asks for each announced piece (up to 3 requests out per link, none
within 1 s of a REJECT, as the node does) and reads frames; nothing else. `gevent`: a greenlet per
link, as the node runs; `selectors`: one stdlib loop, no gevent. What one frame costs here is what
any Python node pays on this machine before its own logic runs.
"""

import struct
import sys
import time

HEADER = struct.Struct(">IB")
HELLO, BITFIELD, HAVE, REQUEST, REJECT = 0, 1, 2, 3, 5  # the frame kinds of docs/PROTOCOL.md used here
PIPELINE, BACK_OFF_S = 3, 1.0


def frame(kind, payload=b""):
    return HEADER.pack(len(payload) + 1, kind) + payload


def take_frames(buf):
    """(kind, payload) of each whole frame at the start of `buf` (a bytearray), removed from it."""
    while len(buf) >= HEADER.size:
        length, kind = HEADER.unpack_from(buf)
        if len(buf) < 4 + length:
            return
        payload = bytes(buf[HEADER.size:4 + length])
        del buf[:4 + length]
        yield kind, payload


GREETING = frame(HELLO, b"P2PS\x01" + b"\x01" * 8 + struct.pack(">H", 0) + bytes(20))


class Link:
    def __init__(self):
        self.buf, self.out, self.ask_after, self.announced = bytearray(), 0, 0.0, []

    def received(self, data):
        """Frames in -> the REQUEST frames to send (bytes, maybe empty)."""
        self.buf += data
        for kind, payload in take_frames(self.buf):
            if kind == HAVE:
                self.announced.append(payload)
            elif kind == REJECT:
                self.out -= 1
                self.ask_after = time.monotonic() + BACK_OFF_S
        reqs = []
        if time.monotonic() >= self.ask_after:
            while self.announced and self.out < PIPELINE:
                reqs.append(frame(REQUEST, self.announced.pop()))
                self.out += 1
        return b"".join(reqs)


def run_gevent(bind, port):
    import gevent
    from gevent import socket

    def serve(sock):
        link = Link()
        sock.sendall(GREETING)
        while data := sock.recv(65536):
            if out := link.received(data):
                sock.sendall(out)

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind, port))
    srv.listen(64)
    while True:
        gevent.spawn(serve, srv.accept()[0])


def run_selectors(bind, port):
    import selectors
    import socket
    sel, links = selectors.DefaultSelector(), {}
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind, port))
    srv.listen(64)
    sel.register(srv, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if sock is srv:
                conn = srv.accept()[0]
                conn.sendall(GREETING)
                links[conn] = Link()
                sel.register(conn, selectors.EVENT_READ)
            elif data := sock.recv(65536):
                if out := links[sock].received(data):
                    sock.sendall(out)
            else:
                sel.unregister(sock)
                sock.close()


if __name__ == "__main__":
    kind, opts = sys.argv[1], dict(zip(sys.argv[2::2], sys.argv[3::2]))
    {"gevent": run_gevent, "selectors": run_selectors}[kind](opts["--bind"], int(opts["--port"]))
