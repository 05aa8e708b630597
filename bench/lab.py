"""The emulated LAN: N hosts as network namespaces joined by a bridge in a namespace of its own.

What lives here: creating and deleting the namespaces, the barrier (the bridge: switched off while
the nodes start, on at T0), and the argv that runs a program on a host. Nothing else in bench/
touches the network.

Safety rules this module keeps (the host's own network is never touched):
- Every object is named with PREFIX; on start, leftovers with that prefix are deleted first.
- Nothing is created in the root namespace: the veth pairs are made from inside the bridge
  namespace (`ip -n BR link add vI type veth peer name eth0 netns HOST_I`), so one end is born in
  the bridge namespace and the other is moved straight into the host namespace.
- The subnet (SUBNET) exists only inside those namespaces; no route, address or NAT is added
  anywhere else, so traffic can only go between the lab's own hosts.
- `Lab` is a context manager: `__exit__` deletes every namespace it created, by name. Deleting a
  namespace destroys the interfaces in it, and a veth dies with its peer.
- Every `ip` call is bounded in time (IP_TIMEOUT_S).

Neighbours are static: each host gets a permanent ARP entry for every other host. The kernel's
ARP table is one table for all namespaces (gc_thresh3 = 1024 entries by default, a sysctl of the
root namespace only), and 60 hosts that each talk to 59 others need 3540: with dynamic ARP, the
table overflowed ("neighbor table overflow" in dmesg), resolution failed and about 1 connect in 3
hung for seconds. Real hosts each have their own table; permanent entries are exempt from that
limit, so static neighbours emulate separate machines without touching a host sysctl.

The barrier is the switch: `hold()` sets the bridge down, `release()` sets it up at T0. While it
is down every bridge port is disabled and drops whatever a host sends, so no byte can move between
hosts before T0, whatever the programs do. Each host keeps its carrier, address and route, so it
binds and listens as usual, and a connect() made early just goes unanswered (its SYN is dropped;
the bench's start gates see that nobody connects early). `sent_while_held()` counts the frames
the hosts sent into the held bridge: the proof, per run, that the barrier held and nobody tried.
IPv6 is off in every lab namespace (the lab is IPv4), so no router solicitation or MLD frame
counts there.
"""

import json
import subprocess

PREFIX = "p2pb-"  # every namespace the lab creates starts with this
BRIDGE_NS = PREFIX + "br"  # the namespace that holds the bridge and the host-side veth ends
SUBNET = "10.77.0"  # a private /24 that exists only inside the lab's namespaces
FIRST_HOST = 2  # host i gets SUBNET.(i + FIRST_HOST); .1 is left unused (no gateway: no way out)
MAX_HOSTS = 200  # addresses .2 .. .201 fit in the /24
IP_TIMEOUT_S = 20  # one `ip` command (a batch of 60 hosts' links takes well under a second)


def _ip(*args, stdin=None):
    """Run `ip ARGS`; raise with ip's own message when it fails."""
    r = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def our_namespaces(prefix=PREFIX):
    """Names of existing namespaces that carry the lab's prefix (ours, maybe from a crashed run)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=IP_TIMEOUT_S).stdout
    names = (line.split()[0] for line in out.splitlines() if line.strip())
    return [n for n in names if n.startswith(prefix)]


def delete_namespaces(names, prefix=PREFIX):
    """Delete the given namespaces (all must carry `prefix`); errors are collected, not raised."""
    errors = []
    for name in names:
        assert name.startswith(prefix), name  # never delete anything that is not ours
        r = subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True,
                           timeout=IP_TIMEOUT_S)
        if r.returncode != 0 and name in our_namespaces(prefix):
            errors.append(f"{name}: {r.stderr.strip()}")
    return errors


def cleanup_leftovers(prefix=PREFIX):
    """Delete namespaces a previous run left behind (it was killed before its own cleanup)."""
    left = our_namespaces(prefix)
    if left:
        print(f"lab: deleting {len(left)} leftover namespaces with prefix {prefix}")
        delete_namespaces(left, prefix)


class Lab:
    """`with Lab(n) as lab:` -> hosts lab.ns[i] with address lab.ip[i], all on one bridge.
    A subclass may set another prefix, address plan and size (bench/shape.py's ScaleLab)."""

    prefix = PREFIX
    max_hosts = MAX_HOSTS
    sysctls = ()  # more `key=value` for every namespace of the lab
    prefix_len = 24  # of the lab's subnet

    def __init__(self, n):
        if not 1 <= n <= self.max_hosts:
            raise ValueError(f"1..{self.max_hosts} hosts, not {n}")
        self.n = n
        self.bridge_ns = self.prefix + "br"
        self.ns = [f"{self.prefix}h{i}" for i in range(n)]
        self.ip = [self.address(i) for i in range(n)]
        self.mac = [f"02:77:00:00:{i >> 8:02x}:{i & 255:02x}" for i in range(n)]
        self._created = []

    def address(self, i):
        return f"{SUBNET}.{i + FIRST_HOST}"

    def __enter__(self):
        cleanup_leftovers(self.prefix)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _add_ns(self, name):
        _ip("netns", "add", name)
        self._created.append(name)

    def _build(self):
        for name in [self.bridge_ns] + self.ns:
            self._add_ns(name)
            # Before the veths arrive, so they are born without IPv6 (new devices take the defaults).
            subprocess.run(["ip", "netns", "exec", name, "sysctl", "-q", "-w",
                            "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
                            *self.sysctls], check=True, timeout=IP_TIMEOUT_S)
        # Inside the bridge namespace: the bridge, and one veth pair per host whose far end goes
        # straight into that host's namespace as eth0. One batch keeps this to one `ip` process.
        cmds = ["link add br0 type bridge stp_state 0", "link set lo up"]  # br0 stays down: hold()
        for i, name in enumerate(self.ns):
            cmds += [f"link add v{i} type veth peer name eth0 address {self.mac[i]} netns {name}",
                     f"link set v{i} master br0", f"link set v{i} up"]
        _ip("-n", self.bridge_ns, "-batch", "-", stdin="\n".join(cmds) + "\n")
        for i, (name, addr) in enumerate(zip(self.ns, self.ip)):
            cmds = ["link set lo up", f"addr add {addr}/{self.prefix_len} dev eth0", "link set eth0 up"]
            cmds += [f"neigh replace {ip} lladdr {mac} dev eth0 nud permanent"
                     for j, (ip, mac) in enumerate(zip(self.ip, self.mac)) if j != i]
            _ip("-n", name, "-batch", "-", stdin="\n".join(cmds) + "\n")

    def hold(self):
        """Switch the LAN off: from now on nothing crosses between hosts (until release)."""
        _ip("-n", self.bridge_ns, "link", "set", "br0", "down")

    def release(self):
        """Switch the LAN on (T0): without STP every port forwards at once."""
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def port_counters(self, unit="packets"):
        """{host index: (frames the host sent to the bridge, frames the bridge sent the host)};
        unit="bytes": the bytes of those frames instead."""
        links = json.loads(_ip("-n", self.bridge_ns, "-s", "-j", "link", "show"))
        out = {}
        for ln in links:
            name = ln.get("ifname", "")
            if name.startswith("v") and name[1:].isdigit():
                st = ln["stats64"]
                out[int(name[1:])] = (st["rx"][unit], st["tx"][unit])
        return out

    def close(self):
        """Delete every namespace this lab created (hosts first, then the bridge)."""
        names, self._created = list(reversed(self._created)), []
        errors = delete_namespaces(names, self.prefix)
        if errors:
            print("lab: could not delete: " + "; ".join(errors))

    def argv(self, i, cmd):
        """argv that runs `cmd` on host i. `ip netns exec` execs `cmd` in place, so the PID that
        Popen returns is the program's own (the bench stops and signals it by that PID)."""
        return ["ip", "netns", "exec", self.ns[i], *cmd]
