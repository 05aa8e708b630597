"""A naive reference node: what an honest competitor writes in an afternoon (bench/race.py).

Standard library only: one thread per connection, one request per piece, no pipelining, no
endgame, no peer exchange, no discovery, no metadata exchange. It is a yardstick for bench/race.py,
never a part of the product: nothing in solution/ imports or runs it.

What it assumes (enough for race.py's layouts, not for the whole SPEC): every /torrent.conf is
full (Peers lists the swarm, FileInfo is present), and containers are not restarted while the
swarm syncs. It does honour the data-file rules of the SPEC: /data.bin may be absent, short, long
or garbage; it is written in place with os.pwrite and os.ftruncate (it may be a bind mount),
verified piece by piece at start, fsynced at completion, and served after completion until the
container is stopped.

Protocol (TCP, port 6881). Every message is a frame: u32 length (big-endian, counting the kind
byte and the payload), u8 kind, payload.

    kind  name   payload                  answer
    1     ASK    (none)                   HAVE
    2     HAVE   bitfield, piece i = bit (7 - i % 8) of byte i // 8
    3     GET    u32 piece index          PIECE, or NONE when the piece is not held
    4     PIECE  u32 piece index, data
    5     NONE   u32 piece index

The downloader keeps one connection per peer and asks it for one piece at a time: ASK for its
bitfield, GET a random piece it has that we lack and no other thread is fetching, verify the SHA-1,
pwrite, repeat; when the peer has nothing we need, ASK again a little later (peers gain pieces).

Logs: one logfmt line per event on stdout (`event=listening`, `event=complete`), the same keys
our node uses, so race.py reads both images alike.
"""

import hashlib
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time

PORT = 6881
DATA_PATH = os.environ.get("NAIVE_DATA", "/data.bin")
CONF_PATH = os.environ.get("NAIVE_CONF", "/torrent.conf")
ASK, HAVE, GET, PIECE, NONE = 1, 2, 3, 4, 5
HEADER = struct.Struct(">IB")
INDEX = struct.Struct(">I")
MAX_FRAME = 64 << 20  # a piece plus its header; anything larger is a broken peer
CONNECT_TIMEOUT_S = 2.0  # a LAN connect answers in milliseconds; a peer not up yet refuses at once
IO_TIMEOUT_S = 10.0  # one request's answer; a stuck peer is dropped and dialled again
RETRY_S = 0.2  # a refused dial (peer still starting) is retried this often
POLL_S = 0.1  # a peer with nothing we need is asked again this often: it gains pieces meanwhile


def log(event, **kv):
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    fields = " ".join(f"{k}={v}" for k, v in kv.items())
    sys.stdout.write(f"ts={stamp} level=info event={event} {fields}\n")
    sys.stdout.flush()


def load_conf(path):
    """(peers, size, piece_size, hashes) from a full torrent.conf; SystemExit naming the field."""
    try:
        with open(path) as f:
            conf = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"config error: torrent.conf: {e}")
    info = conf.get("FileInfo") if isinstance(conf, dict) else None
    if not isinstance(info, dict):
        sys.exit("config error: FileInfo: required (this node does not learn it from peers)")
    size, piece, parts = info.get("Size"), info.get("PartSize"), info.get("Parts")
    if not isinstance(size, int) or size < 0:
        sys.exit("config error: FileInfo.Size: must be an integer >= 0")
    if not isinstance(piece, int) or piece <= 0:
        sys.exit("config error: FileInfo.PartSize: must be an integer > 0")
    if not isinstance(parts, list) or len(parts) != -(-size // piece):
        sys.exit("config error: FileInfo.Parts: must list one SHA-1 per piece")
    peers = conf.get("Peers") or []
    if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
        sys.exit("config error: Peers: must be a list of IP strings")
    return peers, size, piece, [str(p).lower() for p in parts]


class Store:
    """The data file and which pieces of it are correct; every method is thread-safe."""

    def __init__(self, path, size, piece, hashes):
        self.size, self.piece, self.hashes = size, piece, hashes
        self.n = len(hashes)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, size)
        self.lock = threading.Lock()
        self.have = bytearray(self.n)  # 1 = correct on disk
        self.claimed = set()  # pieces some downloader thread is fetching now
        self.done = threading.Event()

    def span(self, i):
        start = i * self.piece
        return start, min(self.piece, self.size - start)

    def verify_all(self):
        for i in range(self.n):
            start, length = self.span(i)
            if hashlib.sha1(os.pread(self.fd, length, start)).hexdigest() == self.hashes[i]:
                self.have[i] = 1
        if self.count() == self.n:
            self.finish()

    def count(self):
        return sum(self.have)

    def bitfield(self):
        bits = bytearray((self.n + 7) // 8)
        for i in range(self.n):
            if self.have[i]:
                bits[i // 8] |= 0x80 >> (i % 8)
        return bytes(bits)

    def read(self, i):
        start, length = self.span(i)
        return os.pread(self.fd, length, start) if self.have[i] else None

    def claim(self, peer_bits):
        """A random piece the peer has that we lack and nobody fetches; None if there is none."""
        with self.lock:
            wanted = [i for i in range(self.n) if not self.have[i] and i not in self.claimed
                      and peer_bits[i // 8] & (0x80 >> (i % 8))]
            if not wanted:
                return None
            i = random.choice(wanted)
            self.claimed.add(i)
            return i

    def release(self, i):
        with self.lock:
            self.claimed.discard(i)

    def store(self, i, data):
        """Write piece i if its SHA-1 is right; True if it was."""
        if hashlib.sha1(data).hexdigest() != self.hashes[i]:
            return False
        os.pwrite(self.fd, data, i * self.piece)
        with self.lock:
            self.have[i] = 1
            complete = self.count() == self.n and not self.done.is_set()
        if complete:
            self.finish()
        return True

    def finish(self):
        os.fsync(self.fd)
        self.done.set()


def send_frame(sock, kind, payload=b""):
    sock.sendall(HEADER.pack(len(payload) + 1, kind) + payload)


def recv_exact(sock, n):
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError("peer closed")
        got += k
    return bytes(buf)


def recv_frame(sock):
    length, kind = HEADER.unpack(recv_exact(sock, HEADER.size))
    if not 1 <= length <= MAX_FRAME:
        raise ConnectionError(f"bad frame length {length}")
    return kind, recv_exact(sock, length - 1)


def serve(sock, store):
    """Answer one inbound connection's ASKs and GETs until it closes."""
    try:
        sock.settimeout(None)
        while True:
            kind, payload = recv_frame(sock)
            if kind == ASK:
                send_frame(sock, HAVE, store.bitfield())
            elif kind == GET and len(payload) == INDEX.size:
                (i,) = INDEX.unpack(payload)
                data = store.read(i) if i < store.n else None
                if data is None:
                    send_frame(sock, NONE, payload)
                else:
                    send_frame(sock, PIECE, payload + data)
            else:
                return
    except (OSError, ConnectionError, struct.error):
        pass
    finally:
        sock.close()


def listen(store):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", PORT))
    srv.listen(128)
    threading.Thread(target=accept_loop, args=(srv, store), daemon=True).start()
    return srv


def accept_loop(srv, store):
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn, store), daemon=True).start()


def fetch_from(peer, store):
    """Download from one peer until our file is complete; reconnect on any error."""
    while not store.done.is_set():
        try:
            sock = socket.create_connection((peer, PORT), timeout=CONNECT_TIMEOUT_S)
        except OSError:
            time.sleep(RETRY_S)
            continue
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(IO_TIMEOUT_S)
            fetch_loop(sock, peer, store)
        except (OSError, ConnectionError, struct.error):
            time.sleep(RETRY_S)
        finally:
            sock.close()


def fetch_loop(sock, peer, store):
    while not store.done.is_set():
        send_frame(sock, ASK)
        kind, bits = recv_frame(sock)
        if kind != HAVE or len(bits) < (store.n + 7) // 8:
            raise ConnectionError("expected HAVE")
        got_any = False
        while not store.done.is_set():
            i = store.claim(bits)
            if i is None:
                break
            try:
                send_frame(sock, GET, INDEX.pack(i))
                kind, payload = recv_frame(sock)
                if kind == PIECE and INDEX.unpack(payload[:4])[0] == i:
                    if not store.store(i, payload[4:]):
                        log("piece_bad", peer=peer, idx=i, result="dropped")
                    got_any = True
                elif kind != NONE:
                    raise ConnectionError("expected PIECE or NONE")
            finally:
                store.release(i)
        if not got_any:
            store.done.wait(POLL_S)


def own_addresses():
    """This container's IPs (Docker maps the hostname to them), so we never dial ourselves."""
    try:
        return set(socket.gethostbyname_ex(socket.gethostname())[2]) | {"127.0.0.1"}
    except OSError:
        return {"127.0.0.1"}


def main():
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # PID 1: nothing to flush but the log
    t0 = time.monotonic()
    peers, size, piece, hashes = load_conf(CONF_PATH)
    store = Store(DATA_PATH, size, piece, hashes)
    store.verify_all()
    listen(store)
    log("listening", addr=f"0.0.0.0:{PORT}", have=f"{store.count()}/{store.n}",
        secs=f"{time.monotonic() - t0:.3f}")
    me = own_addresses()
    for peer in dict.fromkeys(peers):
        if peer not in me:
            threading.Thread(target=fetch_from, args=(peer, store), daemon=True).start()
    store.done.wait()
    log("complete", pieces=store.n, bytes=size, secs=f"{time.monotonic() - t0:.3f}",
        result="verified")
    while True:  # keep serving until the container is stopped
        time.sleep(3600)


if __name__ == "__main__":
    main()
