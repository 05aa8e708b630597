"""libtorrent runner for the bench: one process per host, the comparison for our node.

Usage (from the bench, inside a host's namespace):
    python lt_node.py --data DIR/data.bin --conf DIR/torrent.conf --bind 10.77.0.3 [--port 6881]

It reads the same torrent.conf as our node, builds a v1 .torrent with libtorrent.create_torrent
from the conf's piece hashes (same piece size, same SHA-1s: every host derives the same info-hash),
and seeds or downloads DIR/data.bin. The data file is hash-checked first, like our node's scan.
Prints logfmt lines the bench waits for, in the same shape as our node's:
    event=listening  once the session listens; then the process stops itself (SIGSTOP) until the
                     bench's SIGCONT at T0, and only then adds the torrent (check, dials)
    event=complete   at torrent_finished_alert: every piece downloaded and hash-checked
Never exits by itself; SIGTERM stops it (exit 0), like our node.
"""

import argparse
import json
import os
import signal
import sys
import time

import libtorrent as lt

ALERT_WAIT_MS = 200  # longest sleep between looks at SIGTERM; an alert ends the wait at once
PROGRESS_S = 1.0  # one progress line a second while downloading (like our node), for diagnosis
LISTEN_WAIT_S = 10.0  # give up if the session has not listened by then
BIG = 10_000  # "no limit" for connection and queue settings (60 hosts at most)


def lan_settings(bind, port):
    """The best LAN configuration we know: libtorrent's own high-performance-seed preset, then
    a LAN's changes on top (why each: bench/README.md, "libtorrent")."""
    s = lt.default_settings() if os.environ.get("LT_PRESET") == "none" else lt.high_performance_seed()
    s.update({
        "listen_interfaces": f"{bind}:{port}",
        "outgoing_interfaces": bind,
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "enable_outgoing_utp": False, "enable_incoming_utp": False,
        "enable_outgoing_tcp": True, "enable_incoming_tcp": True,
        "out_enc_policy": lt.enc_policy.disabled, "in_enc_policy": lt.enc_policy.disabled,
        "upload_rate_limit": 0, "download_rate_limit": 0,
        # The preset keeps only 7 MiB queued for disk (a seed reads); a downloader writes, and the
        # preset's limit would stall it: back to the default 100 MiB.
        "max_queued_disk_bytes": 100 << 20,
        "send_buffer_watermark": 8 << 20, "send_buffer_low_watermark": 1 << 20,
        "max_out_request_queue": 1500, "max_allowed_in_request_queue": 4000,
        "connections_limit": 500, "unchoke_slots_limit": -1,  # -1: every interested peer unchoked
        "active_downloads": -1, "active_seeds": -1, "active_limit": -1, "active_checking": BIG,
        "connection_speed": 500, "torrent_connect_boost": 255, "smooth_connects": False,
        # A seed does not dial; its peers dial it (measured faster: bench/README.md).
        "seeding_outgoing_connections": False,
        # A LAN peer that failed to connect is retried soon (the preset gives up after one failure;
        # defaults wait a minute: under load one host once never completed within 120 s).
        "min_reconnect_time": 1, "max_failcount": 100, "peer_connect_timeout": 5,
        "hashing_threads": os.cpu_count() or 2,
        "alert_mask": (lt.alert.category_t.status_notification | lt.alert.category_t.error_notification
                       | lt.alert.category_t.connect_notification),  # peer (dis)connects: logged
    })
    s.update(json.loads(os.environ.get("LT_EXTRA_SETTINGS") or "{}"))  # for trying other settings
    return s


def build_torrent(info):
    """A v1 torrent from the conf's FileInfo: same piece size, piece hashes set from the conf."""
    size, piece, parts = info["Size"], info["PartSize"], info["Parts"]
    entry = lt.create_file_entry("data.bin", size)
    ct = lt.create_torrent([entry], piece, lt.create_torrent.v1_only)
    if ct.num_pieces() != len(parts) or ct.piece_length() != piece:
        sys.exit(f"lt_node: libtorrent made {ct.num_pieces()} pieces of {ct.piece_length()} B, "
                 f"the conf has {len(parts)} of {piece} B")
    for i, h in enumerate(parts):
        ct.set_hash(i, bytes.fromhex(h))
    return lt.torrent_info(ct.generate())


def say(event, **fields):
    sys.stdout.write(" ".join([f"event={event}"] + [f"{k}={v}" for k, v in fields.items()]) + "\n")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--conf", required=True)
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, default=6881)
    a = p.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    t0 = time.monotonic()
    with open(a.conf) as f:
        conf = json.load(f)

    ses = lt.session(lan_settings(a.bind, a.port))
    while not ses.is_listening() or not ses.listen_port():
        if time.monotonic() - t0 > LISTEN_WAIT_S:
            sys.exit("lt_node: session did not listen")
        time.sleep(0.001)
    say("listening", addr=f"{a.bind}:{ses.listen_port()}", version=lt.__version__)
    # The start gate: nothing but the listening socket exists yet (no torrent, no peer, no dial).
    os.kill(os.getpid(), signal.SIGSTOP)

    t_start = time.monotonic()  # after the bench's SIGCONT (T0)
    atp = lt.add_torrent_params()
    atp.ti = build_torrent(conf["FileInfo"])
    atp.save_path = os.path.dirname(os.path.abspath(a.data))
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    h = ses.add_torrent(atp)
    for ip in conf.get("Peers") or []:
        if ip != a.bind:
            h.connect_peer((ip, a.port))

    done = False
    finished = (lt.torrent_status.seeding, lt.torrent_status.finished)
    next_progress = time.monotonic() + PROGRESS_S
    while not stop:
        # Alerts wake us at once; no status polling, which would cost CPU in 60 processes.
        ses.wait_for_alert(ALERT_WAIT_MS)
        check = False
        for al in ses.pop_alerts():
            if isinstance(al, (lt.torrent_error_alert, lt.file_error_alert)):
                say("error", what=json.dumps(al.message()))
            elif isinstance(al, lt.torrent_finished_alert):
                check = True
            elif isinstance(al, lt.state_changed_alert) and al.state in finished:
                check = True  # a seed after its check; libtorrent may post no finished alert
            elif isinstance(al, (lt.peer_connect_alert, lt.peer_disconnected_alert)):
                say("peer", what=json.dumps(al.message()))
        now = time.monotonic()
        if not done and now >= next_progress:
            next_progress = now + PROGRESS_S
            st = h.status()
            say("progress", state=st.state, pct=f"{100 * st.progress:.1f}", peers=st.num_peers,
                rate_mbs=f"{st.download_payload_rate / 1e6:.1f}")
        if not done and check:
            st = h.status()
            if st.is_finished:
                done = True
                say("complete", secs=f"{time.monotonic() - t_start:.3f}", pieces=st.num_pieces,
                    bytes_in=st.total_payload_download, peers=st.num_peers)
    ses.pause()
    h.flush_cache()
    ses.remove_torrent(h)  # closes the file; the bench verifies it after we exit
    del ses
    return 0


if __name__ == "__main__":
    sys.exit(main())
