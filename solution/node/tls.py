"""Opt-in mutual TLS: with --tls-cert/--tls-key/--tls-ca, every link is TLS 1.3 and both ends show a
certificate signed by the swarm's CA. The CA is the membership.

Rule: a peer that fails the handshake gets nothing, not even our HELLO (which names the file):
links are wrapped before conn.py sees them, and a refused peer is logged once a minute at most.
Peers are addresses, not names: the CA's signature is checked, never a host name.
Loaded only when TLS is configured, so an open node never imports ssl.
"""

import ssl
import time

from . import log
from .config import ConfigError

HANDSHAKE_TIMEOUT_S = 5.0  # a peer that starts TLS and stalls frees its slot this fast
REFUSED_LOG_S = 60.0  # one refused-peer line per address this often at most
REFUSED_REMEMBERED = 4096  # addresses remembered for that; older ones are forgotten first


def context(cert, key, ca, server_side, cls=ssl.SSLContext):
    """An SSLContext for one side (cls: gevent.ssl.SSLContext on the node, ssl's for the client).
    A certificate, key or CA that cannot be used raises ConfigError naming its flag."""
    ctx = cls(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
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


class Gate:
    """Wraps accepted and dialled sockets in TLS; None for a peer that is not a member."""

    def __init__(self, config):
        from gevent import ssl as gssl  # the cooperative SSLContext; ssl itself stays unpatched
        args = (config.tls_cert, config.tls_key, config.tls_ca)
        self._server = context(*args, server_side=True, cls=gssl.SSLContext)
        self._client = context(*args, server_side=False, cls=gssl.SSLContext)
        self._refused_at = {}  # ip -> when we last logged refusing it

    def wrap(self, sock, server_side, ip):
        import gevent
        ctx = self._server if server_side else self._client
        tls = None
        try:
            tls = ctx.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False)
            with gevent.Timeout(HANDSHAKE_TIMEOUT_S, TimeoutError("TLS handshake timed out")):
                tls.do_handshake()
            return tls
        except OSError as e:  # ssl.SSLError and TimeoutError are OSErrors too
            (tls or sock).close()
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
