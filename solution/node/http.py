"""HTTP for orchestrators, on `--http-port` only: `/livez`, `/readyz`, Prometheus `/metrics`.

Rule: read-only. Every answer is computed at request time from `status.snapshot`, so nothing on
the hot path updates a metric object, and the node behaves the same with or without this module.
It imports prometheus_client and gevent.pywsgi, so `main` imports it only when the flag is set: a
node without the flag pays nothing at start (both together cost ~40 ms of a ~150 ms start).

  /livez              200 while the event loop answers and the node is not shutting down
  /readyz             200 once the peer listener is up and the file's metadata is known, else 503
  /readyz?complete=1  ... and every piece is held and verified
  /metrics            Prometheus text format 0.0.4 (node metrics, plus process_* of this process)
"""

from urllib.parse import parse_qs

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__, log, status

MAX_HTTP_CONNS = 8  # probes and a scraper need one or two; bounded so a client cannot pile up sockets
CONN_TIMEOUT_S = 30.0  # a connection lives at most this long (keep-alive included): slow clients end
PREFIX = "p2p_node"
STATES = ("metadata", "fetching", "complete")  # the `state` gauge: learning metadata, then pieces

# snapshot key -> (counter name without _total, help). Counters only ever grow during a process.
COUNTERS = {
    "bytes_in": ("received_bytes", "Piece bytes received from peers (verified or not)."),
    "bytes_out": ("sent_bytes", "Piece bytes sent to peers."),
    "pieces_in": ("pieces_received", "Pieces received, verified and written."),
    "pieces_bad": ("pieces_failed_verification", "Pieces received whose SHA-1 did not match."),
    "dup_pieces": ("pieces_duplicate", "Pieces received that were already held (endgame)."),
    "bans": ("bans", "Peers banned for sending bad pieces repeatedly."),
    "dials": ("dials", "Outbound connection attempts."),
}


class NodeCollector:
    """Turns one status snapshot into metric families at scrape time."""

    def __init__(self, node):
        self.node = node

    def describe(self):
        return []  # names are fixed; nothing to check at registration (and no early snapshot)

    def collect(self):
        snap = status.snapshot(self.node.state, self.node.swarm.listening)
        for key, (name, doc) in COUNTERS.items():
            if key in snap:
                yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=snap[key])
        yield _gauge("pieces_held", "Pieces held and verified.", snap["have"])
        yield _gauge("pieces", "Pieces in the file (0 while the metadata is unknown).", snap["pieces"])
        yield _gauge("file_bytes", "Size of the file in bytes (0 while unknown).", snap["size"] or 0)
        yield _gauge("peers_connected", "Peer links open now.", snap["peers_connected"])
        yield _gauge("peers_known", "Peer addresses known.", snap["peers_known"])
        yield _gauge("uptime_seconds", "Seconds since the node started.", snap["uptime_s"])
        yield _gauge("ready", "1 when listening with the metadata known (what /readyz says).",
                     int(_ready(snap, False)))
        state = GaugeMetricFamily(f"{PREFIX}_state", "1 for the node's current state.", labels=["state"])
        for name in STATES:
            state.add_metric([name], int(snap["state"] == name))
        yield state
        info = GaugeMetricFamily(f"{PREFIX}_info", "The node's version and id.", labels=["version", "node_id"])
        info.add_metric([__version__, snap["node_id"]], 1)
        yield info


def _gauge(name, doc, value):
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _ready(snap, need_complete):
    return snap["listening"] and snap["file_info"] and (snap["complete"] or not need_complete)


def _why_not_ready(snap, need_complete):
    if not snap["listening"]:
        return "not listening"
    if not snap["file_info"]:
        return "metadata unknown"
    return f"not complete ({snap['have']}/{snap['pieces']} pieces)" if need_complete else ""


class _BoundedServer(WSGIServer):
    def handle(self, sock, address):
        with gevent.Timeout(CONN_TIMEOUT_S, False):  # silent: the server closes the socket after
            super().handle(sock, address)


class _ErrorLog:
    """pywsgi's error stream (tracebacks of a failing request) as our log lines."""

    def write(self, text):
        if text.strip():
            log.warning("http_error", why=text.strip()[-500:], result="answered_500")

    def flush(self):
        pass


class HttpEndpoint:
    """The WSGI app and its server. start() binds (an OSError surfaces at start, as for the peer port)."""

    def __init__(self, node):
        self.node = node
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(node))
        ProcessCollector(registry=self.registry)  # RSS, CPU, open fds: what a pod's limits are about
        cfg = node.config
        self.server = _BoundedServer((cfg.bind, cfg.http_port), self.app, spawn=Pool(MAX_HTTP_CONNS),
                                     log=None, error_log=_ErrorLog())

    def start(self):
        self.server.start()
        log.info("http_listening", addr=f"{self.node.config.bind}:{self.node.config.http_port}",
                 paths="/livez,/readyz,/metrics", result="ok")
        return self

    def stop(self):
        self.server.stop(timeout=0.1)
        log.info("http_closed", result="ok")

    def app(self, environ, start_response):
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", b"GET or HEAD only\n")
        path = environ.get("PATH_INFO", "")
        if path == "/livez":
            if self.node.stopping.is_set():
                return _reply(start_response, "503 Service Unavailable", b"stopping\n")
            return _reply(start_response, "200 OK", b"ok\n")
        if path == "/readyz":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            need_complete = query.get("complete", ["0"])[-1] in ("1", "true", "yes")
            return self._readyz(start_response, need_complete)
        if path == "/metrics":
            return _reply(start_response, "200 OK", generate_latest(self.registry), CONTENT_TYPE_LATEST)
        return _reply(start_response, "404 Not Found", b"try /livez, /readyz or /metrics\n")

    def _readyz(self, start_response, need_complete):
        snap = status.snapshot(self.node.state, self.node.swarm.listening)
        if _ready(snap, need_complete) and not self.node.stopping.is_set():
            return _reply(start_response, "200 OK", b"ready\n")
        why = "stopping" if self.node.stopping.is_set() else _why_not_ready(snap, need_complete)
        return _reply(start_response, "503 Service Unavailable", f"not ready: {why}\n".encode())


def _reply(start_response, code, body, content_type="text/plain; charset=utf-8"):
    start_response(code, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
