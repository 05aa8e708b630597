"""Opt-in mutual TLS: with --tls-cert/--tls-key/--tls-ca, every link is TLS 1.3 and both ends show a
certificate signed by the swarm's CA. The CA is the membership.

Rule: a peer that fails the handshake gets nothing, not even our HELLO (which names the file):
links are wrapped before conn.py sees them, and a refused peer is logged once a minute at most.
Peers are addresses, not names: the CA's signature is checked, never a host name.
Loaded only when TLS is configured, so an open node never imports ssl.

A Link runs ssl's SSLObject over memory buffers on a plain gevent socket, not gevent's SSLSocket:
OpenSSL on a socket reads each 16 KiB record with two recv calls and writes each with a send, and
gevent adds a Python round trip per record; here one recv or send moves many records.
"""

import ssl
import time

from . import log
from .config import ConfigError

HANDSHAKE_TIMEOUT_S = 5.0  # a peer that starts TLS and stalls frees its slot this fast
RECV_BYTES = 256 << 10  # ciphertext taken per recv (16 records); one buffer per node, see Link._fill
SEND_BYTES = 256 << 10  # plaintext encrypted per send: bounds the encrypted copy held at once
REFUSED_LOG_S = 60.0  # one refused-peer line per address this often at most
REFUSED_REMEMBERED = 4096  # addresses remembered for that; older ones are forgotten first


def context(cert, key, ca, server_side):
    """An SSLContext for one side (the node's links and the status client alike).
    A certificate, key or CA that cannot be used raises ConfigError naming its flag."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # peers are addresses; membership is the CA's signature
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(ca)
    except OSError as e:  # ssl.SSLError is an OSError
        raise ConfigError("tls-ca", f"cannot use {ca}: {e}") from None
    try:
        ctx.load_cert_chain(cert, key)
    except OSError as e:
        raise ConfigError("tls-cert", f"cannot use {cert} with key {key}: {e}") from None
    return ctx


class Link:
    """A TLS connection on a gevent socket, with the few socket methods conn.py uses. One reader
    and one writer greenlet may use it at once: every send of ciphertext holds the send lock, so
    records leave in the order OpenSSL made them."""

    def __init__(self, sock, ctx, server_side, raw):
        import gevent
        from .greenlets import Semaphore
        self._spawn = gevent.spawn
        self._sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._in, self._out, server_side=server_side)
        self._raw = raw  # the node's receive buffer, shared: see _fill
        self._sending = Semaphore()

    def getsockopt(self, *args):
        return self._sock.getsockopt(*args)

    def setsockopt(self, *args):
        return self._sock.setsockopt(*args)

    def handshake(self):
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionResetError("peer closed during the TLS handshake") from None
        self._flush()

    def recv_into(self, view):
        """Plaintext into view: every record already received, waiting only if there is none.
        0 at the end of the stream, closed cleanly or not (frames carry their own lengths)."""
        n, end, read = 0, len(view), self._tls.read
        try:
            while True:
                try:
                    while n < end:
                        k = read(end - n, view[n:])
                        if not k:
                            break
                        n += k
                    return n
                except ssl.SSLWantReadError:
                    if n or not self._fill():
                        return n
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return n  # the next call returns 0
        finally:
            if self._out.pending:  # reading made a reply (a key update): the writer may be busy
                self._spawn(self._send_pending)

    def _fill(self):
        """Ciphertext from the socket into OpenSSL; False at EOF. The raw buffer is shared by the
        node's links: nothing yields between the recv filling it and the copy out of it."""
        k = self._sock.recv_into(self._raw)
        if not k:
            self._in.write_eof()
            return False
        self._in.write(memoryview(self._raw)[:k])
        return True

    def sendall(self, data):
        with self._sending, memoryview(data) as view:
            for at in range(0, len(view), SEND_BYTES):
                self._tls.write(view[at:at + SEND_BYTES])
                self._flush()

    def _send_pending(self):
        try:
            with self._sending:
                self._flush()
        except OSError:
            pass  # the link is ending: its reader sees that too

    def abort(self):
        """Close after a failed handshake, first sending OpenSSL's alert if it can go at once."""
        try:
            if self._out.pending:
                self._sock.send(self._out.read(), 0, 0.0)  # gevent's timeout: 0 never waits
        except OSError:
            pass
        self._sock.close()

    def _flush(self):
        while self._out.pending:
            self._sock.sendall(self._out.read())

    def shutdown(self, how):
        self._sock.shutdown(how)

    def close(self):
        self._sock.close()


class Gate:
    """Wraps accepted and dialled sockets in TLS; None for a peer that is not a member."""

    def __init__(self, config):
        args = (config.tls_cert, config.tls_key, config.tls_ca)
        self._server = context(*args, server_side=True)
        self._client = context(*args, server_side=False)
        self._raw = bytearray(RECV_BYTES)
        self._refused_at = {}  # ip -> when we last logged refusing it

    def wrap(self, sock, server_side, ip):
        import gevent
        link = Link(sock, self._server if server_side else self._client, server_side, self._raw)
        try:
            with gevent.Timeout(HANDSHAKE_TIMEOUT_S, TimeoutError("TLS handshake timed out")):
                link.handshake()
            return link
        except OSError as e:  # ssl.SSLError and TimeoutError are OSErrors too
            link.abort()
            self._refused(ip, e)
            return None

    def _refused(self, ip, e):
        now = time.monotonic()
        if len(self._refused_at) > REFUSED_REMEMBERED:
            self._refused_at = {k: t for k, t in self._refused_at.items() if now - t < REFUSED_LOG_S}
        if now - self._refused_at.get(ip, -REFUSED_LOG_S) >= REFUSED_LOG_S:
            self._refused_at[ip] = now
            why = getattr(e, "reason", None) or str(e) or type(e).__name__
            log.warning("peer_refused", peer=ip, why=f"TLS: {why}", result="not_a_member")
