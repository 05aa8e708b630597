"""Parse and validate everything the node is told: argv, NODE_* environment, /torrent.conf.

Rule: this module does no I/O beyond reading the conf file it is pointed at, and every problem
raises `ConfigError(field, why)`, so the operator gets one line that names the field.
Result: a frozen `Config`, holding an optional frozen `FileInfo`.

Every node pays this module's import and run before it listens, so it stays cheap to load: plain
__slots__ classes instead of dataclasses (each frozen dataclass is generated code, compiled at
import), and argparse only for --help and for argv it cannot read by hand (argparse with its
formatter pulls in shutil and gettext).
"""

import hashlib
import re

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


class _Frozen:
    """Immutable value objects: equal when of one type with equal fields, hashable, readable."""

    __slots__ = ()

    def __init__(self, **fields):
        for k in self.__slots__:
            object.__setattr__(self, k, fields[k])

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is frozen")

    __delattr__ = __setattr__

    def _fields(self):
        return tuple(getattr(self, k) for k in self.__slots__)

    def __eq__(self, other):
        return type(other) is type(self) and other._fields() == self._fields()

    def __hash__(self):
        return hash(self._fields())

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in self.__slots__)})"


class FileInfo(_Frozen):
    __slots__ = ("size", "piece_size", "hashes")  # hashes: SHA-1 digests, 20 bytes each, per piece

    def __init__(self, size, piece_size, hashes):
        super().__init__(size=size, piece_size=piece_size, hashes=hashes)

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


class Config(_Frozen):
    __slots__ = ("data_path", "conf_path", "state_path", "port", "bind", "log_level", "discovery",
                 "peers",  # (ip, port) pairs from the conf
                 "file_info",  # FileInfo or None
                 "peer_names",  # (host name, port) pairs: conf entries that are names, and --peers-dns
                 "http_port",  # /livez, /readyz, /metrics on this TCP port; 0: no HTTP at all
                 "max_upload_rate",  # bytes/s of piece data sent, all peers together; 0: no limit
                 "tls_cert", "tls_key", "tls_ca")  # paths, all three or none: mutual TLS with the swarm's CA
    DEFAULTS = {"peer_names": (), "http_port": 0, "max_upload_rate": 0,
                "tls_cert": None, "tls_key": None, "tls_ca": None}

    def __init__(self, **fields):
        super().__init__(**{**self.DEFAULTS, **fields})

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
    """Dotted quad, four decimal numbers 0..255 without leading zeros (as ipaddress reads it)."""
    parts = text.split(".")
    return len(parts) == 4 and all(
        p.isascii() and p.isdigit() and len(p) <= 3 and (p == "0" or p[0] != "0") and int(p) <= 255
        for p in parts)


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


# flag -> (environment variable, default, help); argv reads `--flag value` or `--flag=value`.
FLAGS = {
    "data": ("NODE_DATA", "/data.bin", "data file"),
    "conf": ("NODE_CONF", "/torrent.conf", "torrent conf"),
    "state": ("NODE_STATE", None, "where learned file info and peers persist (default DATA.state.json)"),
    "port": ("NODE_PORT", str(DEFAULT_PORT), "TCP+UDP port"),
    "bind": ("NODE_BIND", "0.0.0.0", "IPv4 to listen on"),
    "log-level": ("NODE_LOG_LEVEL", "info", "debug|info|warning|error"),
    "discovery": ("NODE_DISCOVERY", "on", "on|off: UDP self-discovery"),
    "http-port": ("NODE_HTTP_PORT", "", "serve /livez /readyz /metrics on this TCP port (default off)"),
    "max-upload-rate": ("NODE_MAX_UPLOAD_RATE", "0",
                        "bytes/s of piece data sent, all peers together, e.g. 20M (0: none)"),
    "peers-dns": ("NODE_PEERS_DNS", "", "name[:port],...: every address a name resolves to is a peer"),
}
TLS_FLAGS = {  # the node's and the status client's
    "tls-cert": ("NODE_TLS_CERT", None, "this node's certificate"),
    "tls-key": ("NODE_TLS_KEY", None, "its private key"),
    "tls-ca": ("NODE_TLS_CA", None, "the swarm's CA certificate"),
}
FLAGS.update(TLS_FLAGS)


def _read_flags(argv, env):
    """{flag: value} from argv over the environment; argv it cannot read goes to argparse, which
    prints --help or raises ConfigError("argv", ...) for the operator."""
    got = {name: env.get(var, default) for name, (var, default, _) in FLAGS.items()}
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        name = name[2:] if name.startswith("--") else ""
        if name not in FLAGS or (not eq and i + 1 == len(argv)):
            return _argparse_flags(argv, env)
        if not eq:
            i += 1
            value = argv[i]
            if value.startswith("-"):  # `--data --conf x`: argparse says which flag lacks a value
                return _argparse_flags(argv, env)
        got[name] = value
        i += 1
    return got


def _argparse_flags(argv, env):
    p = arg_parser("python3 -m node", "Peer-to-peer file-sync node.")
    add_flags(p, FLAGS, env)
    ns = p.parse_args(argv)
    return {name: getattr(ns, name.replace("-", "_")) for name in FLAGS}


def arg_parser(prog, description=None):
    """An argparse parser whose errors are one ConfigError("argv", ...) line, like every other."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise ConfigError("argv", message)

    return Parser(prog=prog, description=description)


def add_flags(p, flags, env):
    for name, (var, default, text) in flags.items():
        p.add_argument("--" + name, default=env.get(var, default), help=f"{text} ({var})")


def parse_tls_flags(cert, key, ca):
    """(cert, key, ca): all three paths, or all None (open mode)."""
    given = {"tls-cert": cert, "tls-key": key, "tls-ca": ca}
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
    return cert, key, ca


def _parse_flags(flags):
    if not _is_port(flags["port"]):
        raise ConfigError("port", f"expected 1..65535, got {flags['port']!r}")
    if flags["log-level"] not in LOG_LEVELS:
        raise ConfigError("log-level", f"expected one of {'|'.join(LOG_LEVELS)}, got {flags['log-level']!r}")
    if flags["discovery"] not in ("on", "off"):
        raise ConfigError("discovery", f"expected on|off, got {flags['discovery']!r}")
    if not is_ip(flags["bind"]):
        raise ConfigError("bind", f"expected an IPv4 address, got {flags['bind']!r}")
    return int(flags["port"])


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
    flags = _read_flags(argv, env)
    port = _parse_flags(flags)
    http_port = _parse_http_port(flags["http-port"], port)
    max_upload_rate = parse_rate(flags["max-upload-rate"], "max-upload-rate")
    try:
        with open(flags["conf"], "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("conf", f"cannot read {flags['conf']} ({e.strerror})") from None
    peers, info = parse_torrent_conf(text, port)
    cert, key, ca = parse_tls_flags(flags["tls-cert"], flags["tls-key"], flags["tls-ca"])
    ips, names = split_names(peers)
    names = tuple(dict.fromkeys(names + parse_peers_dns(flags["peers-dns"], port)))
    return Config(data_path=flags["data"], conf_path=flags["conf"],
                  state_path=flags["state"] or flags["data"] + ".state.json", port=port,
                  bind=flags["bind"], log_level=flags["log-level"], discovery=flags["discovery"] == "on",
                  peers=ips, file_info=info, peer_names=names, http_port=http_port,
                  max_upload_rate=max_upload_rate, tls_cert=cert, tls_key=key, tls_ca=ca)
