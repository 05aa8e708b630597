"""Capped links for the scale bench: a lab of up to 1000 hosts whose every link has a fixed speed.

What lives here: ScaleLab (lab.Lab with its own prefix `p2ps-` and a /16 that exists only inside
its namespaces), shaping every host's link with `tc` (a token bucket on both ends of its veth),
and the probe that shows a cap holds.

How a link is capped (this kernel has no netem, so no delay is added, only rate):
- upload: a tbf on the host's `eth0`, in the host's namespace (what the host sends);
- download: a tbf on the bridge-side end `vI`, in the bridge's namespace (what the host receives).
Egress on both ends of the veth, so each host has its own upload and download limit, as a
machine with its own NIC would; the bridge itself is not limited. `tc` runs only inside the
lab's own namespaces (`tc -n NS`), never in the root namespace.

    python3 bench/shape.py check [--mbit 20]   # the probe: TCP through a capped link
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import lab  # noqa: E402

SCALE_PREFIX = "p2ps-"  # not the main bench's p2pb-: the two never delete each other's namespaces
SCALE_NET = "10.78"  # a private /16 that exists only inside the scale lab's namespaces
TC_TIMEOUT_S = 60  # one `tc -batch` (500 links take a few seconds)
QUEUE_LATENCY_MS = 100  # a tbf's queue: this long at its rate; a real modem or switch port buffers too
BURST_MS = 10  # tokens a tbf may save up: 10 ms at its rate (at least a few full frames)
MIN_BURST_B = 16 << 10
PROBE_SECS = 5.0  # the probe measures this long after a warm-up
PROBE_WARMUP_S = 1.0  # TCP's slow start and the bucket's first burst are not the link's rate
PROBE_PORT = 5201


class ScaleLab(lab.Lab):
    """lab.Lab for hundreds of hosts: prefix p2ps-, host i at 10.78.(i // 250).(i % 250 + 2)/16."""

    prefix = SCALE_PREFIX
    max_hosts = 1000
    prefix_len = 16
    # Loss-based congestion control, as most hosts run (cubic; a namespace may only pick what the
    # host allows: here reno and bbr): BBR over a token bucket reads the bucket's line-rate bursts
    # as bandwidth and lost a quarter of its packets at the cap (bench/README.md, "Scale")
    sysctls = ("net.ipv4.tcp_congestion_control=reno",)

    def address(self, i):
        return f"{SCALE_NET}.{i // 250}.{i % 250 + 2}"

    def shape(self, mbit, first_mbit=None):
        """Cap every host's upload and download at `mbit` Mbit/s (host 0 at `first_mbit` if given:
        a faster seeder)."""
        rates = [first_mbit if (i == 0 and first_mbit) else mbit for i in range(self.n)]
        bridge = [_tbf(f"v{i}", r) for i, r in enumerate(rates)]
        _tc(self.bridge_ns, bridge)
        for i, r in enumerate(rates):
            _tc(self.ns[i], [_tbf("eth0", r)])

    def shaped(self):
        """{host index: (upload Mbit/s, download Mbit/s)} as the qdiscs say (for the record)."""
        out = {}
        down = _rates(self.bridge_ns)
        for i in range(self.n):
            up = _rates(self.ns[i]).get("eth0")
            out[i] = (up, down.get(f"v{i}"))
        return out


def _tbf(dev, mbit):
    rate_bps = int(mbit * 1e6)
    burst = max(MIN_BURST_B, rate_bps // 8 * BURST_MS // 1000)
    return f"qdisc replace dev {dev} root tbf rate {rate_bps}bit burst {burst} latency {QUEUE_LATENCY_MS}ms"


def _tc(ns, cmds):
    assert ns.startswith(SCALE_PREFIX), ns  # tc only inside the scale lab's own namespaces
    r = subprocess.run(["tc", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n",
                       capture_output=True, text=True, timeout=TC_TIMEOUT_S)
    if r.returncode != 0:
        raise RuntimeError(f"tc -n {ns}: {r.stderr.strip()}")


def _rates(ns):
    r = subprocess.run(["tc", "-n", ns, "-j", "qdisc", "show"], capture_output=True, text=True,
                       timeout=TC_TIMEOUT_S)
    out = {}
    for q in json.loads(r.stdout or "[]"):
        if q.get("kind") == "tbf":
            out[q["dev"]] = q["options"]["rate"] * 8 / 1e6  # tc reports bytes/s
    return out


# -- the probe: is a cap what it says? -------------------------------------------------------------
def probe_recv(bind):
    """Accept one TCP sender, read PROBE_WARMUP_S + PROBE_SECS, print payload Mbit/s (JSON)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind, PROBE_PORT))
    srv.listen(1)
    print("listening", flush=True)
    c, _ = srv.accept()
    buf = bytearray(1 << 16)
    t0 = time.monotonic()
    got, t_start = 0, None
    while True:
        n = c.recv_into(buf)
        now = time.monotonic()
        if not n:
            break
        if t_start is None and now - t0 >= PROBE_WARMUP_S:
            t_start = now
        elif t_start is not None:
            got += n
            if now - t_start >= PROBE_SECS:
                break
    c.close()
    secs = time.monotonic() - t_start
    print(json.dumps({"payload_mbit": got * 8 / secs / 1e6, "secs": secs}), flush=True)


def probe_send(to):
    s = socket.create_connection((to, PROBE_PORT), timeout=5)
    block = b"\0" * (1 << 16)
    try:
        while True:
            s.sendall(block)
    except OSError:
        pass


def check(mbit, py=sys.executable):
    """Two hosts, both capped at `mbit`; TCP from host 1 to host 0 -> measured payload Mbit/s."""
    with ScaleLab(2) as lab_:
        lab_.release()
        lab_.shape(mbit)
        me = os.path.abspath(__file__)
        recv = subprocess.Popen(lab_.argv(0, [py, me, "recv", "--bind", lab_.ip[0]]),
                                stdout=subprocess.PIPE, text=True)
        send = None
        try:
            if recv.stdout.readline().strip() != "listening":
                raise SystemExit("shape: probe receiver did not start")
            send = subprocess.Popen(lab_.argv(1, [py, me, "send", "--to", lab_.ip[0]]),
                                    stderr=subprocess.DEVNULL)
            res = json.loads(recv.stdout.readline())
            recv.wait(10)
        finally:
            for p in (send, recv):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        res.update(cap_mbit=mbit, shaped=lab_.shaped())
        return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cmd", choices=("check", "recv", "send"))
    p.add_argument("--mbit", type=float, default=20.0)
    p.add_argument("--bind")
    p.add_argument("--to")
    a = p.parse_args(argv)
    if a.cmd == "recv":
        return probe_recv(a.bind)
    if a.cmd == "send":
        return probe_send(a.to)
    res = check(a.mbit)
    # TCP/IP headers take 52 of every 1500 bytes on the wire (MSS 1448 with timestamps): 96.5%
    print(f"shape: {a.mbit:g} Mbit/s cap -> {res['payload_mbit']:.2f} Mbit/s of TCP payload "
          f"({100 * res['payload_mbit'] / a.mbit:.1f}%) over {res['secs']:.1f} s; qdiscs {res['shaped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
