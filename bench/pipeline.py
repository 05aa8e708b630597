"""The machine's ideal pipeline: what one receiver can do with nothing but the essential work.

One host sends SIZE bytes over one TCP connection; the other receives them, SHA-1s each piece,
pwrites it into a file, then fsyncs. No protocol, no event loop, no bookkeeping: a swarm cannot
move bytes into verified files faster than this, so it is the ceiling the node is measured against.

    python pipeline.py recv --bind IP --port P --out FILE --size N --piece P --threads 1|2
    python pipeline.py send --to IP --port P --size N

`recv` prints one JSON line: seconds from the first byte to the last pwrite (`write_s`) and to the
end of the fsync (`fsync_s`). threads=1 receives, hashes and writes in one thread; threads=2
receives in one thread and hashes+writes in another (buffers handed over through a queue).
`send` sends from one in-memory buffer, repeated (cheap: the sender is not what is measured).
"""

import argparse
import hashlib
import json
import os
import queue
import socket
import sys
import threading
import time

SEND_CHUNK = 4 << 20  # sender's buffer (random bytes, sent repeatedly)
QUEUE_PIECES = 64  # two-thread version: pieces in flight between receiver and hasher (16 MiB)
ACCEPT_TIMEOUT_S = 30  # the sender connects within this or the run fails
IO_TIMEOUT_S = 60  # one recv/send may not stall longer than this


def recv_exact(sock, view):
    """Fill `view` from the socket (a piece arrives in several short reads)."""
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise EOFError(f"sender closed after {got} of {n} bytes of a piece")
        got += k


def receive(args):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.bind, args.port))
    srv.listen(1)
    print(json.dumps({"event": "listening"}), flush=True)
    srv.settimeout(ACCEPT_TIMEOUT_S)
    conn, _ = srv.accept()
    conn.settimeout(IO_TIMEOUT_S)
    fd = os.open(args.out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    n_pieces = -(-args.size // args.piece)
    sizes = [min(args.piece, args.size - i * args.piece) for i in range(n_pieces)]
    digests = []

    def consume(i, view):
        digests.append(hashlib.sha1(view).digest())
        os.pwrite(fd, view, i * args.piece)

    first = bytearray(1)  # the clock starts at the first byte, not at accept
    recv_exact(conn, memoryview(first))
    t0 = time.monotonic()
    if args.threads == 1:
        buf = bytearray(args.piece)
        buf[0:1] = first
        view = memoryview(buf)
        recv_exact(conn, view[1:sizes[0]])
        consume(0, view[:sizes[0]])
        for i in range(1, n_pieces):
            recv_exact(conn, view[:sizes[i]])
            consume(i, view[:sizes[i]])
    else:
        free, full = queue.Queue(), queue.Queue()
        for _ in range(QUEUE_PIECES):
            free.put(bytearray(args.piece))
        failed = []

        def worker():
            try:
                while True:
                    item = full.get()
                    if item is None:
                        return
                    i, buf = item
                    consume(i, memoryview(buf)[:sizes[i]])
                    free.put(buf)
            except BaseException as e:  # reported by the receiver thread
                failed.append(e)
                free.put(bytearray(args.piece))

        th = threading.Thread(target=worker)
        th.start()
        for i in range(n_pieces):
            buf = free.get()
            view = memoryview(buf)
            if i == 0:
                buf[0:1] = first
                recv_exact(conn, view[1:sizes[0]])
            else:
                recv_exact(conn, view[:sizes[i]])
            full.put((i, buf))
        full.put(None)
        th.join()
        if failed:
            raise failed[0]
    t_write = time.monotonic() - t0
    os.fsync(fd)
    t_fsync = time.monotonic() - t0
    os.close(fd)
    conn.close()
    print(json.dumps({"event": "done", "threads": args.threads, "bytes": args.size, "piece": args.piece,
                      "write_s": t_write, "fsync_s": t_fsync,
                      "sha1_of_hashes": hashlib.sha1(b"".join(digests)).hexdigest()}), flush=True)


def send(args):
    buf = memoryview(os.urandom(SEND_CHUNK))
    sock = socket.create_connection((args.to, args.port), timeout=IO_TIMEOUT_S)
    left = args.size
    while left:
        k = min(left, len(buf))
        sock.sendall(buf[:k])
        left -= k
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # wait for the receiver to close: all bytes are in
    sock.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--bind", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--threads", type=int, choices=(1, 2), default=1)
    r.add_argument("--piece", type=int, default=256 << 10)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    for q in (r, s):
        q.add_argument("--port", type=int, default=7000)
        q.add_argument("--size", type=int, default=1 << 30)
    args = p.parse_args()
    receive(args) if args.cmd == "recv" else send(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
