"""Parse and validate everything the node is told: argv, NODE_* environment, /torrent.conf.

Rule: this module does no I/O beyond reading the conf file it is pointed at, and every problem
raises `ConfigError(field, why)`, so the operator gets one line that names the field.
Result: a frozen `Config`, holding an optional frozen `FileInfo`.
"""

import argparse
import hashlib
import ipaddress
import re
from dataclasses import dataclass

import ujson

DEFAULT_PORT = 6881  # every node of a swarm listens on the same port (the SPEC's peers are bare IPs)
MAX_PIECES = 1 << 22  # bounds bitfield and metadata frames (512 KiB and 80 MiB)
MAX_PIECE_BYTES = 64 << 20  # one piece must fit in one Pieces frame
LOG_LEVELS = ("debug", "info", "warning", "error")
# A DNS host name (RFC 1123): dot-separated labels of letters, digits, '-' (and '_', which
# orchestrators' service names may carry); at most 253 characters in all.
HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
MAX_HOST_CHARS = 253


class ConfigError(Exception):
    """A problem in what the operator gave us; `field` names where it is."""

    def __init__(self, field, why):
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


@dataclass(frozen=True)
class FileInfo:
    size: int
    piece_size: int
    hashes: tuple  # SHA-1 digests, 20 bytes each, one per piece

    @property
    def n_pieces(self):
        return len(self.hashes)

    def piece_offset(self, i):
        return i * self.piece_size

    def piece_len(self, i):
        return min(self.piece_size, self.size - i * self.piece_size)

    def span(self, first, count):
        """(offset, length) in bytes of pieces first .. first+count-1."""
        start = first * self.piece_size
        return start, min(self.size, (first + count) * self.piece_size) - start

    @property
    def meta_id(self):
        """Identifies the file: SHA-1 over size, piece size and all piece hashes."""
        h = hashlib.sha1(b"%d:%d:" % (self.size, self.piece_size))
        h.update(b"".join(self.hashes))
        return h.digest()

    def to_json(self):
        return {"Size": self.size, "PartSize": self.piece_size, "Parts": [h.hex() for h in self.hashes]}


@dataclass(frozen=True)
class Config:
    data_path: str
    conf_path: str
    state_path: str
    port: int
    bind: str
    log_level: str
    discovery: bool
    peers: tuple  # (ip, port) pairs from the conf
    file_info: object  # FileInfo or None
    peer_names: tuple = ()  # (host name, port) pairs: conf entries that are names, and --peers-dns
    http_port: int = 0  # /livez, /readyz, /metrics on this TCP port; 0: no HTTP at all
    max_upload_rate: int = 0  # bytes/s of piece data sent, all peers together; 0: no limit
    tls_cert: object = None  # paths, all three or none: mutual TLS with the swarm's CA
    tls_key: object = None
    tls_ca: object = None

    @property
    def tls(self):
        return self.tls_cert is not None


def _type_name(v):
    return {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _need(value, kinds, field, what):
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError(field, f"expected {what}, got {_type_name(value)}")
    return value


def check_file_info(size, piece_size, n_parts, field="FileInfo"):
    """Shared by the conf parser and the metadata a peer sends us."""
    if size < 0:
        raise ConfigError(f"{field}.Size", f"must be >= 0, got {size}")
    if not 0 < piece_size <= MAX_PIECE_BYTES:
        raise ConfigError(f"{field}.PartSize", f"must be in 1..{MAX_PIECE_BYTES}, got {piece_size}")
    want = -(-size // piece_size)
    if n_parts != want:
        raise ConfigError(f"{field}.Parts", f"has {n_parts} hashes, Size/PartSize needs {want}")
    if want > MAX_PIECES:
        raise ConfigError(f"{field}.Parts", f"{want} pieces is more than the {MAX_PIECES} supported")


def parse_file_info(obj, field="FileInfo"):
    """FileInfo or None (absent, null, or null Parts: the node learns it from a peer)."""
    if obj is None:
        return None
    _need(obj, dict, field, "object or null")
    parts = obj.get("Parts")
    if parts is None:  # learn it from a peer; but a Size or PartSize given must still be sane
        for key in ("Size", "PartSize"):
            if obj.get(key) is not None:
                _need(obj[key], int, f"{field}.{key}", "integer")
        return None
    size = _need(obj.get("Size"), int, f"{field}.Size", "integer")
    piece_size = _need(obj.get("PartSize"), int, f"{field}.PartSize", "integer")
    _need(parts, list, f"{field}.Parts", "array of SHA-1 hex strings")
    hashes = []
    for i, p in enumerate(parts):
        _need(p, str, f"{field}.Parts[{i}]", "SHA-1 hex string")
        try:
            digest = bytes.fromhex(p)
        except ValueError:
            digest = b""
        if len(digest) != 20:
            raise ConfigError(f"{field}.Parts[{i}]", f"expected 40 hex digits, got {p[:48]!r}")
        hashes.append(digest)
    check_file_info(size, piece_size, len(hashes), field)
    return FileInfo(size, piece_size, tuple(hashes))


def _is_port(text):
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536


def is_ip(text):
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def is_host_name(text):
    """A syntactically valid DNS name; an all-digit last label is a mistyped IP, not a name."""
    labels = text.rstrip(".").split(".")
    return (0 < len(text) <= MAX_HOST_CHARS and all(HOST_LABEL.fullmatch(x) for x in labels)
            and not labels[-1].isdigit())


def split_names(addrs):
    """(host, port) pairs -> (those whose host is an IP, those whose host is a DNS name)."""
    return (tuple(a for a in addrs if is_ip(a[0])), tuple(a for a in addrs if not is_ip(a[0])))


def parse_peers_dns(text, default_port):
    """--peers-dns / NODE_PEERS_DNS: 'name[:port][,name[:port]...]' -> (name, port) pairs."""
    out = []
    for item in filter(None, (x.strip() for x in (text or "").split(","))):
        host, port = parse_address(item, default_port, "peers-dns")
        if not is_host_name(host):
            raise ConfigError("peers-dns", f"expected a host name, got {item!r}")
        out.append((host, port))
    return tuple(out)


def parse_address(text, default_port, field):
    """'10.0.0.2' or '10.0.0.2:7000' or 'tasks.p2p[:port]' -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = text.strip(), str(default_port)
    if not (is_ip(host) or is_host_name(host)):
        raise ConfigError(field, f"expected an IP address or host name, got {text!r}")
    if not _is_port(port):
        raise ConfigError(field, f"bad port in {text!r}")
    return host, int(port)


def parse_peers(obj, default_port):
    if obj is None:
        return ()
    _need(obj, list, "Peers", "array of IP address or host name strings, or null")
    return tuple(parse_address(_need(p, str, f"Peers[{i}]", "IP address or host name string"),
                               default_port, f"Peers[{i}]")
                 for i, p in enumerate(obj))


def parse_torrent_conf(text, default_port=DEFAULT_PORT, field_prefix=""):
    """JSON text of /torrent.conf -> (peers, FileInfo or None)."""
    try:
        obj = ujson.loads(text)
    except (ValueError, OverflowError) as e:
        raise ConfigError(field_prefix or "torrent.conf", f"invalid JSON ({e})") from None
    _need(obj, dict, field_prefix or "torrent.conf", "a JSON object")
    return parse_peers(obj.get("Peers"), default_port), parse_file_info(obj.get("FileInfo"))


class _ArgParser(argparse.ArgumentParser):
    def error(self, message):  # one line naming the problem, like every other config error
        raise ConfigError("argv", message)


def _arg_parser(env):
    p = _ArgParser(prog="python3 -m node", description="Peer-to-peer file-sync node.")
    p.add_argument("--data", default=env.get("NODE_DATA", "/data.bin"), help="data file (NODE_DATA)")
    p.add_argument("--conf", default=env.get("NODE_CONF", "/torrent.conf"), help="torrent conf (NODE_CONF)")
    p.add_argument("--state", default=env.get("NODE_STATE"),
                   help="where learned file info and peers persist (NODE_STATE; default DATA.state.json)")
    p.add_argument("--port", default=env.get("NODE_PORT", str(DEFAULT_PORT)), help="TCP+UDP port (NODE_PORT)")
    p.add_argument("--bind", default=env.get("NODE_BIND", "0.0.0.0"), help="IPv4 to listen on (NODE_BIND)")
    p.add_argument("--log-level", default=env.get("NODE_LOG_LEVEL", "info"), help="debug|info|warning|error")
    p.add_argument("--discovery", default=env.get("NODE_DISCOVERY", "on"), help="on|off: UDP self-discovery")
    p.add_argument("--http-port", default=env.get("NODE_HTTP_PORT", ""),
                   help="serve /livez /readyz /metrics on this TCP port (NODE_HTTP_PORT; default off)")
    p.add_argument("--max-upload-rate", default=env.get("NODE_MAX_UPLOAD_RATE", "0"),
                   help="bytes/s of piece data sent, all peers together, e.g. 20M (NODE_MAX_UPLOAD_RATE; 0: none)")
    add_tls_flags(p, env)
    p.add_argument("--peers-dns", default=env.get("NODE_PEERS_DNS", ""),
                   help="name[:port],...: every address a name resolves to is a peer (NODE_PEERS_DNS)")
    return p


def add_tls_flags(p, env):
    p.add_argument("--tls-cert", default=env.get("NODE_TLS_CERT"), help="this node's certificate (NODE_TLS_CERT)")
    p.add_argument("--tls-key", default=env.get("NODE_TLS_KEY"), help="its private key (NODE_TLS_KEY)")
    p.add_argument("--tls-ca", default=env.get("NODE_TLS_CA"), help="the swarm's CA certificate (NODE_TLS_CA)")


def parse_tls_flags(ns):
    """(cert, key, ca): all three paths, or all None (open mode)."""
    given = {"tls-cert": ns.tls_cert, "tls-key": ns.tls_key, "tls-ca": ns.tls_ca}
    if not any(given.values()):
        return None, None, None
    for flag, path in given.items():
        if not path:
            raise ConfigError(flag, "mutual TLS needs --tls-cert, --tls-key and --tls-ca together")
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise ConfigError(flag, f"cannot read {path} ({e.strerror})") from None
    return ns.tls_cert, ns.tls_key, ns.tls_ca


def _parse_flags(ns):
    if not _is_port(ns.port):
        raise ConfigError("port", f"expected 1..65535, got {ns.port!r}")
    if ns.log_level not in LOG_LEVELS:
        raise ConfigError("log-level", f"expected one of {'|'.join(LOG_LEVELS)}, got {ns.log_level!r}")
    if ns.discovery not in ("on", "off"):
        raise ConfigError("discovery", f"expected on|off, got {ns.discovery!r}")
    try:
        ipaddress.IPv4Address(ns.bind)
    except ValueError:
        raise ConfigError("bind", f"expected an IPv4 address, got {ns.bind!r}") from None
    return int(ns.port)


RATE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_rate(text, field):
    """'0', '' or 'off' -> 0 (no limit); '500K', '20M', '1G' (bytes/s, binary units), or bytes."""
    t = text.strip().upper().removesuffix("/S").removesuffix("B").removesuffix("I")
    if t in ("", "0", "OFF"):
        return 0
    unit = t[-1] if t[-1] in RATE_UNITS else ""
    number = t[:-1] if unit else t
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(field, f"expected bytes per second like 500K, 20M or 1G, got {text!r}")
    return max(1, int(value * RATE_UNITS[unit]))


def _parse_http_port(text, port):
    """'' or 'off' -> 0 (no HTTP server); else a port that is not the peers' port."""
    if text in ("", "off"):
        return 0
    if not _is_port(text):
        raise ConfigError("http-port", f"expected 1..65535 or off, got {text!r}")
    if int(text) == port:
        raise ConfigError("http-port", f"must differ from the peer port {port}")
    return int(text)


def load(argv, env):
    """argv (without the program name) + environment + conf file -> Config."""
    ns = _arg_parser(env).parse_args(argv)
    port = _parse_flags(ns)
    http_port = _parse_http_port(ns.http_port, port)
    max_upload_rate = parse_rate(ns.max_upload_rate, "max-upload-rate")
    try:
        with open(ns.conf, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("conf", f"cannot read {ns.conf} ({e.strerror})") from None
    peers, info = parse_torrent_conf(text, port)
    cert, key, ca = parse_tls_flags(ns)
    ips, names = split_names(peers)
    names = tuple(dict.fromkeys(names + parse_peers_dns(ns.peers_dns, port)))
    return Config(data_path=ns.data, conf_path=ns.conf, state_path=ns.state or ns.data + ".state.json",
                  port=port, bind=ns.bind, log_level=ns.log_level, discovery=ns.discovery == "on",
                  peers=ips, file_info=info, peer_names=names, http_port=http_port,
                  max_upload_rate=max_upload_rate, tls_cert=cert, tls_key=key, tls_ca=ca)
