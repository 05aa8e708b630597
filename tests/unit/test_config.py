"""config: /torrent.conf parsing and validation, flags + NODE_* environment, and the CLI's exit on a
bad conf (exit 2, exactly one stderr line naming the field)."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from node import config
from node.config import ConfigError, FileInfo

SOLUTION = os.path.join(os.path.dirname(__file__), "..", "..", "solution")


def sha1_hex(data):
    return hashlib.sha1(data).hexdigest()


def make_file_info(size=1000, piece_size=256, seed=b"x"):
    data = (seed * size)[:size]
    parts = [sha1_hex(data[i:i + piece_size]) for i in range(0, size, piece_size)]
    return {"Size": size, "PartSize": piece_size, "Parts": parts}


def conf_text(**top):
    return json.dumps(top)


def assert_config_error(exc_info, field):
    err = exc_info.value
    assert err.field == field
    text = str(err)
    assert "\n" not in text and "\r" not in text
    assert text.startswith(field + ":")


# -- valid confs --------------------------------------------------------------------------------

def test_valid_conf_parses_file_info_and_peers():
    fi = make_file_info(1000, 256)
    peers, info = config.parse_torrent_conf(conf_text(Peers=["10.0.0.2", "10.0.0.3:7000"], FileInfo=fi))
    assert peers == (("10.0.0.2", config.DEFAULT_PORT), ("10.0.0.3", 7000))
    assert isinstance(info, FileInfo)
    assert info.size == 1000 and info.piece_size == 256 and info.n_pieces == 4
    assert info.hashes == tuple(bytes.fromhex(h) for h in fi["Parts"])
    assert info.piece_len(3) == 1000 - 3 * 256  # short last piece
    assert info.span(2, 2) == (512, 488)
    assert info.to_json() == fi


def test_peer_without_port_gets_the_default_port_given():
    peers, _ = config.parse_torrent_conf(conf_text(Peers=["172.31.111.42"]), default_port=7777)
    assert peers == (("172.31.111.42", 7777),)


def test_conf_accepts_bytes():
    peers, info = config.parse_torrent_conf(conf_text(Peers=[], FileInfo=make_file_info()).encode())
    assert peers == () and info.n_pieces == 4


@pytest.mark.parametrize("top", [{"Peers": None}, {"Peers": []}, {}])
def test_peers_null_empty_or_absent_is_no_peers(top):
    peers, info = config.parse_torrent_conf(json.dumps({**top, "FileInfo": make_file_info()}))
    assert peers == ()
    assert info is not None


@pytest.mark.parametrize("top", [
    {"FileInfo": None},
    {},
    {"FileInfo": {"Size": 1000, "PartSize": 256, "Parts": None}},
    {"FileInfo": {"Size": 1000, "PartSize": 256}},
])
def test_file_info_null_absent_or_parts_null_is_unknown(top):
    peers, info = config.parse_torrent_conf(json.dumps({"Peers": ["10.0.0.2"], **top}))
    assert info is None
    assert peers == (("10.0.0.2", config.DEFAULT_PORT),)


def test_empty_file_is_valid():
    _, info = config.parse_torrent_conf(conf_text(FileInfo={"Size": 0, "PartSize": 256, "Parts": []}))
    assert info.size == 0 and info.n_pieces == 0 and info.hashes == ()


def test_uppercase_hex_is_accepted():
    fi = make_file_info(100, 100)
    fi["Parts"] = [p.upper() for p in fi["Parts"]]
    _, info = config.parse_torrent_conf(conf_text(FileInfo=fi))
    assert info.hashes[0].hex() == fi["Parts"][0].lower()


def test_size_exact_multiple_of_piece_size():
    _, info = config.parse_torrent_conf(conf_text(FileInfo=make_file_info(1024, 256)))
    assert info.n_pieces == 4 and info.piece_len(3) == 256


def test_meta_id_depends_on_every_field():
    base = config.parse_file_info(make_file_info(1000, 256))
    other_hash = FileInfo(base.size, base.piece_size, (bytes(20),) + base.hashes[1:])
    other_size = FileInfo(base.size - 1, base.piece_size, base.hashes)
    ids = {base.meta_id, other_hash.meta_id, other_size.meta_id}
    assert len(ids) == 3 and all(len(i) == 20 for i in ids)


# -- wrong types and values: ConfigError naming the exact field -------------------------------

def _fi(**changes):
    fi = make_file_info(1000, 256)
    fi.update(changes)
    return fi


def _parts_with(i, value):
    parts = list(make_file_info(1000, 256)["Parts"])
    parts[i] = value
    return parts


BAD_CONFS = [
    # (id, conf object, field)
    ("size-string", {"FileInfo": _fi(Size="1000")}, "FileInfo.Size"),
    ("size-bool", {"FileInfo": _fi(Size=True)}, "FileInfo.Size"),
    ("size-float", {"FileInfo": _fi(Size=1000.0)}, "FileInfo.Size"),
    ("size-null", {"FileInfo": _fi(Size=None)}, "FileInfo.Size"),
    ("size-negative", {"FileInfo": {"Size": -1, "PartSize": 256, "Parts": []}}, "FileInfo.Size"),
    ("partsize-string", {"FileInfo": _fi(PartSize="256")}, "FileInfo.PartSize"),
    ("partsize-bool", {"FileInfo": _fi(PartSize=False)}, "FileInfo.PartSize"),
    ("partsize-float", {"FileInfo": _fi(PartSize=256.5)}, "FileInfo.PartSize"),
    ("partsize-zero", {"FileInfo": {"Size": 0, "PartSize": 0, "Parts": []}}, "FileInfo.PartSize"),
    ("partsize-negative", {"FileInfo": {"Size": 0, "PartSize": -256, "Parts": []}}, "FileInfo.PartSize"),
    ("partsize-huge", {"FileInfo": {"Size": 0, "PartSize": config.MAX_PIECE_BYTES + 1, "Parts": []}},
     "FileInfo.PartSize"),
    ("parts-string", {"FileInfo": _fi(Parts="abc")}, "FileInfo.Parts"),
    ("parts-object", {"FileInfo": _fi(Parts={"0": "ab" * 20})}, "FileInfo.Parts"),
    ("parts-too-few", {"FileInfo": _fi(Parts=make_file_info(1000, 256)["Parts"][:3])}, "FileInfo.Parts"),
    ("parts-too-many", {"FileInfo": _fi(Parts=make_file_info(1000, 256)["Parts"] * 2)}, "FileInfo.Parts"),
    ("parts-for-empty-file", {"FileInfo": {"Size": 0, "PartSize": 256, "Parts": ["ab" * 20]}},
     "FileInfo.Parts"),
    ("part-not-hex", {"FileInfo": _fi(Parts=_parts_with(3, "zz" * 20))}, "FileInfo.Parts[3]"),
    ("part-short", {"FileInfo": _fi(Parts=_parts_with(0, "ab" * 19))}, "FileInfo.Parts[0]"),
    ("part-long", {"FileInfo": _fi(Parts=_parts_with(1, "ab" * 21))}, "FileInfo.Parts[1]"),
    ("part-odd-length", {"FileInfo": _fi(Parts=_parts_with(2, "a" * 39))}, "FileInfo.Parts[2]"),
    ("part-int", {"FileInfo": _fi(Parts=_parts_with(2, 12345))}, "FileInfo.Parts[2]"),
    ("part-null", {"FileInfo": _fi(Parts=_parts_with(3, None))}, "FileInfo.Parts[3]"),
    ("part-newline", {"FileInfo": _fi(Parts=_parts_with(1, "ab\n" * 13))}, "FileInfo.Parts[1]"),
    ("fileinfo-array", {"FileInfo": [1000, 256]}, "FileInfo"),
    ("fileinfo-string", {"FileInfo": "x"}, "FileInfo"),
    ("peers-string", {"Peers": "10.0.0.2"}, "Peers"),
    ("peers-object", {"Peers": {"a": "10.0.0.2"}}, "Peers"),
    ("peer-int", {"Peers": ["10.0.0.2", 167772162]}, "Peers[1]"),
    ("peer-null", {"Peers": [None]}, "Peers[0]"),
    ("peer-list", {"Peers": ["10.0.0.2", "10.0.0.3", ["10.0.0.4"]]}, "Peers[2]"),
    ("peer-empty", {"Peers": [""]}, "Peers[0]"),
    ("peer-space", {"Peers": ["10.0.0.2 10.0.0.3"]}, "Peers[0]"),
    ("peer-bad-port", {"Peers": ["10.0.0.2:http"]}, "Peers[0]"),
    ("peer-port-zero", {"Peers": ["10.0.0.2:0"]}, "Peers[0]"),
    ("peer-port-big", {"Peers": ["10.0.0.2:65536"]}, "Peers[0]"),
    ("peer-newline", {"Peers": ["10.0.0.2\n:x"]}, "Peers[0]"),
    ("size-string-parts-null", {"FileInfo": {"Size": "x", "PartSize": 256, "Parts": None}}, "FileInfo.Size"),
    ("piece-float-no-parts", {"FileInfo": {"Size": 10, "PartSize": 2.5}}, "FileInfo.PartSize"),
    ("top-array", ["10.0.0.2"], "torrent.conf"),
    ("top-null", None, "torrent.conf"),
]


@pytest.mark.parametrize("obj,field", [c[1:] for c in BAD_CONFS], ids=[c[0] for c in BAD_CONFS])
def test_wrong_type_or_value_names_the_field(obj, field):
    with pytest.raises(ConfigError) as exc_info:
        config.parse_torrent_conf(json.dumps(obj))
    assert_config_error(exc_info, field)


@pytest.mark.parametrize("text", ['{"Peers": [}', "", "{", "not json", '{"FileInfo": {"Size": 1,}}x'])
def test_broken_json_is_a_config_error(text):
    with pytest.raises(ConfigError) as exc_info:
        config.parse_torrent_conf(text)
    assert_config_error(exc_info, "torrent.conf")


@pytest.mark.parametrize("port", ["²", "1²", "٣"])
def test_peer_port_with_unicode_digits_is_a_config_error(port):
    """str.isdigit() accepts '²', which int() rejects; the operator must get a ConfigError
    naming the peer, not a traceback. (ASCII-only ports are what an IPv4 peer can have.)"""
    with pytest.raises(ConfigError) as exc_info:
        config.parse_torrent_conf(conf_text(Peers=["10.0.0.2:" + port]))
    assert_config_error(exc_info, "Peers[0]")


# -- load(): argv + environment + conf file -----------------------------------------------------

@pytest.fixture
def conf_file(tmp_path):
    path = tmp_path / "torrent.conf"
    path.write_text(conf_text(Peers=["10.0.0.2", "10.0.0.3:7000"], FileInfo=make_file_info()))
    return str(path)


def test_load_defaults(conf_file):
    cfg = config.load(["--conf", conf_file], {})
    assert cfg.conf_path == conf_file
    assert cfg.data_path == "/data.bin"
    assert cfg.state_path == "/data.bin.state.json"
    assert cfg.port == config.DEFAULT_PORT
    assert cfg.bind == "0.0.0.0"
    assert cfg.log_level == "info"
    assert cfg.discovery is True
    assert cfg.peers == (("10.0.0.2", config.DEFAULT_PORT), ("10.0.0.3", 7000))
    assert cfg.file_info.n_pieces == 4


def test_load_from_environment(conf_file, tmp_path):
    data = str(tmp_path / "d.bin")
    env = {"NODE_CONF": conf_file, "NODE_DATA": data, "NODE_PORT": "7001", "NODE_BIND": "127.0.0.5",
           "NODE_LOG_LEVEL": "debug", "NODE_DISCOVERY": "off"}
    cfg = config.load([], env)
    assert cfg.conf_path == conf_file
    assert cfg.data_path == data
    assert cfg.state_path == data + ".state.json"
    assert cfg.port == 7001
    assert cfg.bind == "127.0.0.5"
    assert cfg.log_level == "debug"
    assert cfg.discovery is False
    # the port flag is the default port of peers given without one
    assert cfg.peers == (("10.0.0.2", 7001), ("10.0.0.3", 7000))


def test_flags_override_environment(conf_file, tmp_path):
    env = {"NODE_CONF": "/nonexistent/env.conf", "NODE_DATA": "/env/data.bin", "NODE_STATE": "/env/s.json",
           "NODE_PORT": "7001", "NODE_BIND": "127.0.0.5", "NODE_LOG_LEVEL": "debug",
           "NODE_DISCOVERY": "off"}
    argv = ["--conf", conf_file, "--data", "/flag/data.bin", "--state", "/flag/s.json", "--port", "7002",
            "--bind", "127.0.0.6", "--log-level", "warning", "--discovery", "on"]
    cfg = config.load(argv, env)
    assert (cfg.conf_path, cfg.data_path, cfg.state_path) == (conf_file, "/flag/data.bin", "/flag/s.json")
    assert (cfg.port, cfg.bind, cfg.log_level, cfg.discovery) == (7002, "127.0.0.6", "warning", True)


def test_http_is_off_unless_asked_for(conf_file):
    assert config.load(["--conf", conf_file], {}).http_port == 0
    assert config.load(["--conf", conf_file], {"NODE_HTTP_PORT": "off"}).http_port == 0
    assert config.load(["--conf", conf_file], {"NODE_HTTP_PORT": "9100"}).http_port == 9100
    assert config.load(["--conf", conf_file, "--http-port", "9200"], {"NODE_HTTP_PORT": "9100"}).http_port == 9200


def test_state_path_from_environment(conf_file):
    cfg = config.load(["--conf", conf_file], {"NODE_STATE": "/var/s.json"})
    assert cfg.state_path == "/var/s.json"


@pytest.mark.parametrize("argv,field", [
    (["--port", "0"], "port"),
    (["--port", "65536"], "port"),
    (["--port", "-1"], "port"),
    (["--port", "http"], "port"),
    (["--port", ""], "port"),
    (["--port", "²"], "port"),
    (["--log-level", "verbose"], "log-level"),
    (["--log-level", "INFO"], "log-level"),
    (["--discovery", "yes"], "discovery"),
    (["--discovery", ""], "discovery"),
    (["--bind", "localhost"], "bind"),
    (["--bind", "::1"], "bind"),
    (["--bind", "10.0.0.256"], "bind"),
    (["--http-port", "0"], "http-port"),
    (["--http-port", "x"], "http-port"),
    (["--http-port", "6881"], "http-port"),  # the peer port: both are TCP
])
def test_bad_flag_names_the_field(conf_file, argv, field):
    with pytest.raises(ConfigError) as exc_info:
        config.load(["--conf", conf_file] + argv, {})
    assert_config_error(exc_info, field)


def test_bad_environment_value_names_the_field(conf_file):
    with pytest.raises(ConfigError) as exc_info:
        config.load(["--conf", conf_file], {"NODE_PORT": "x"})
    assert_config_error(exc_info, "port")


def test_missing_conf_file_names_conf(tmp_path):
    with pytest.raises(ConfigError) as exc_info:
        config.load(["--conf", str(tmp_path / "absent.conf")], {})
    assert_config_error(exc_info, "conf")


def test_bad_conf_content_through_load(tmp_path):
    path = tmp_path / "torrent.conf"
    path.write_text(conf_text(FileInfo=_fi(Size="x")))
    with pytest.raises(ConfigError) as exc_info:
        config.load(["--conf", str(path)], {})
    assert_config_error(exc_info, "FileInfo.Size")


# -- the real CLI -------------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "node", *args], cwd=SOLUTION, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": ""})


def _one_error_line(proc, field):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert field in lines[0]


def test_cli_missing_conf_exits_2_with_one_line():
    proc = run_cli("--conf", "/nonexistent/torrent.conf")
    _one_error_line(proc, "conf")
    assert proc.stdout == ""


def test_cli_wrong_type_exits_2_with_one_line(tmp_path):
    path = tmp_path / "torrent.conf"
    path.write_text(conf_text(Peers=[], FileInfo=_fi(Size="x")))
    proc = run_cli("--conf", str(path), "--data", str(tmp_path / "data.bin"))
    _one_error_line(proc, "FileInfo.Size")
    assert not (tmp_path / "data.bin").exists()  # nothing touched on a config error


def test_cli_unknown_flag_exits_2_with_one_line():
    _one_error_line(run_cli("--no-such-flag"), "--no-such-flag")
