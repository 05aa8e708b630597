"""Wire the node together: state, storage, swarm, discovery; progress lines; ordered shutdown.

Rule: this is the only module that starts top-level greenlets or handles signals. A signal handler
only sets an Event; `run` does the shutdown (close -> join(timeout) -> kill) on the main greenlet.
"""

import gc
import os
import signal
import sys
import time

import gevent
import ujson
from gevent.event import Event

from . import __version__, log
from .config import ConfigError, parse_torrent_conf
from .greenlets import until_tick
from .hub import Hub
from .peers import Swarm
from .state import Change, NodeState, Source
from .storage import Storage

PROGRESS_INTERVAL_S = 1.0  # one progress line a second while fetching
PERSIST_DELAY_S = 1.0  # learned peers are saved this long after a change, at most this often


class Node:
    def __init__(self, config):
        self.config = config
        self.state = NodeState(os.urandom(8))
        self.storage = None
        gate = None
        if config.tls:
            from .tls import Gate  # loads the certificates: ConfigError if they cannot be used
            gate = Gate(config)
        self.swarm = Swarm(self.state, config, self.crash, gate)
        self.hub = Hub(self.state, self.swarm, config.port, self.learn_meta, config.max_upload_rate)
        self.discovery = None
        self.http = None  # node.http.HttpEndpoint when --http-port is set
        self.names = None  # names.Names when a peer is given by DNS name
        self.stopping = Event()
        self._persist_wanted = Event()
        self._loops = []

    # -- start --------------------------------------------------------------------------------
    def start(self):
        cfg, s = self.config, self.state
        saved_peers, saved_info = self._load_saved()
        s.subscribe(self._on_change)
        self.swarm.listen(self.hub)
        log.info("listening", version=__version__, addr=f"{cfg.bind}:{cfg.port}", data=cfg.data_path,
                 conf=cfg.conf_path, node_id=s.node_id.hex(), discovery="on" if cfg.discovery else "off",
                 tls="mutual" if cfg.tls else "off")
        if cfg.http_port:
            from .http import HttpEndpoint  # prometheus_client and pywsgi: only when asked for
            self.http = HttpEndpoint(self).start()
        for addr in cfg.peers:
            s.add_peer(addr, Source.CONF)
        for addr in saved_peers:
            s.add_peer(addr, Source.SAVED)
        info = cfg.file_info or saved_info
        if info is not None:
            self._use_info(info, "conf" if cfg.file_info else "saved")
        else:
            log.info("file_info", result="unknown", action="asking_peers")
        self.swarm.open()  # while the file is checked: what is checked is served (scan batches)
        self._spawn(self._progress_loop)
        self._spawn(self._persist_loop)
        if cfg.discovery:
            from .discovery import Discovery
            self.discovery = Discovery(self)
            self.discovery.start()
        if cfg.peer_names:
            from .names import Names
            self.names = Names(self)
            self.names.start()
        self.swarm.wake()

    def _spawn(self, fn):
        g = gevent.spawn(fn)
        g.link_exception(self.crash)
        self._loops.append(g)

    def crash(self, greenlet):
        log.error("internal_error", greenlet=str(greenlet), why=repr(greenlet.exception), result="stopping")
        self.stopping.set()

    def _use_info(self, info, source):
        self.storage = Storage(self.config.data_path, info)
        self.storage.open()
        self.hub.use_storage(self.storage)
        self.state.set_info(info)
        log.info("file_info", source=source, size=info.size, piece_size=info.piece_size,
                 pieces=info.n_pieces, result="known")
        self._spawn(self._scan)

    def _scan(self):
        t0 = time.monotonic()
        self.storage.scan(self.state.mark_checked)
        self.state.scan_finished()
        s = self.state
        log.info("scan_done", have=s.have_count, pieces=s.info.n_pieces,
                 secs=time.monotonic() - t0, result="complete" if s.complete else "partial")

    # -- reacting to state changes ------------------------------------------------------------
    def _on_change(self, change):
        if change in (Change.HAVE, Change.REQUESTABLE, Change.META):
            self.swarm.kick_all()
        if change in (Change.PEERS, Change.META):
            self._persist_wanted.set()
            self.swarm.wake()
        if change is Change.COMPLETE:
            gevent.spawn(self._on_complete)

    def _on_complete(self):
        s = self.state
        self.storage.sync()
        log.info("complete", pieces=s.info.n_pieces, bytes=s.info.size,
                 secs=s.completed_at - s.started, bytes_in=s.counters["bytes_in"],
                 dup_pieces=s.counters["dup_pieces"], bad_pieces=s.counters["pieces_bad"],
                 peers_used=len(self.hub.sources), result="verified")

    def learn_meta(self, info, peer):
        if self.state.info is None:
            self._use_info(info, f"peer:{peer}")
            self._save()  # at once: a restart without it would send this node back to zero

    # -- loops --------------------------------------------------------------------------------
    def _progress_loop(self):
        s = self.state
        last_in = last_out = 0
        last_t = time.monotonic()
        while True:
            gevent.sleep(until_tick(PROGRESS_INTERVAL_S))
            now = time.monotonic()
            got, sent = s.counters["bytes_in"], s.counters["bytes_out"]
            s.set_rates((got - last_in) / (now - last_t), (sent - last_out) / (now - last_t))
            rate = s.rates["in"] / 1e6
            last_in, last_out, last_t = got, sent, now
            if s.info is None:
                log.info("progress", meta="unknown", peers=len(s.conns), known=len(s.peers))
            elif not s.complete:
                log.info("progress", have=f"{s.have_count}/{s.info.n_pieces}",
                         pct=100.0 * s.have_count / max(1, s.info.n_pieces), rate_mbs=rate,
                         bytes_in=got, bytes_out=s.counters["bytes_out"], peers=len(s.conns),
                         known=len(s.peers))

    def _persist_loop(self):
        while True:
            self._persist_wanted.wait()
            gevent.sleep(PERSIST_DELAY_S)  # one write for a burst: a start meets dozens of peers
            self._persist_wanted.clear()
            self._save()

    def _save(self):
        s = self.state
        doc = {"Peers": [f"{ip}:{port}" for ip, port in s.verified_addrs()],
               "FileInfo": s.info.to_json() if s.info else None}
        tmp = self.config.state_path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(ujson.dumps(doc))
            os.replace(tmp, self.config.state_path)  # our own side file, never the data file
        except OSError as e:
            log.warning("state_save", path=self.config.state_path, why=e.strerror, result="failed")

    def _load_saved(self):
        try:
            with open(self.config.state_path, "rb") as f:
                peers, info = parse_torrent_conf(f.read(), self.config.port, "saved state")
        except FileNotFoundError:
            return (), None
        except (OSError, ConfigError) as e:
            log.warning("state_load", path=self.config.state_path, why=str(e), result="ignored")
            return (), None
        if info and self.config.file_info and info.meta_id != self.config.file_info.meta_id:
            info = None  # the conf changed since: it wins
        log.info("state_load", peers=len(peers), file_info="yes" if info else "no", result="ok")
        return peers, info

    # -- stop ---------------------------------------------------------------------------------
    def stop(self):
        t0 = time.monotonic()
        for g in self._loops:
            g.kill(block=False)
        if self.discovery is not None:
            self.discovery.stop()
        if self.http is not None:
            self.http.stop()
        if self.names is not None:
            self.names.stop()
        self.swarm.stop()
        self._save()
        if self.storage is not None:
            self.storage.close()
        log.info("stopped", secs=time.monotonic() - t0, result="ok")


def run(config):
    """Run a node until SIGTERM/SIGINT; returns the process exit code."""
    # The hub formats greenlet context in error reports with pprint.saferepr by default, and
    # importing pprint (dataclasses, inspect, ast) costs 6 ms of start-up; reprlib is loaded already.
    gevent.config.set("format_context", "reprlib.repr")
    log.configure(config.log_level)
    try:
        node = Node(config)
    except ConfigError as e:
        sys.stderr.write(f"config error: {e}\n")
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, _on_signal, node, sig)
    try:
        node.start()
    except OSError as e:
        log.error("start_failed", why=f"{e.strerror or e} ({getattr(e, 'filename', '') or 'socket'})",
                  result="exit")
        return 1
    gc.freeze()  # start-up's objects live as long as the node: no collection need walk them again
    node.stopping.wait()
    node.stop()
    return 0


def _on_signal(node, sig):
    log.info("signal", name=signal.Signals(sig).name, action="shutdown")
    node.stopping.set()
