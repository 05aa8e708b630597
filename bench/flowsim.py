#!/usr/bin/env python3
"""A fluid model of the scale bench: one seeder, N downloaders, every link capped (W1 by default).

Flows share each capped uplink and downlink max-min fairly (as TCP flows roughly do), in steps of
DT seconds; on top of them runs the node's request and upload policy: the picker itself
(solution/node/picker.py), PIPELINE_REQUESTS per link sized by the link's rate, one request
served at a time per link, UPLOAD_SLOTS per node with UPLOAD_QUEUE waiting for UPLOAD_WAIT_S,
REJECT and a back-off of REJECTED_WAIT_S, the seeder's spread-first rule, one HAVE per piece to
every neighbour at once. Designs the node does not have are options, off by default (`steal`,
`match`, `want_max`, `have_window`: HAVEs told in batches, and `oracle`: no requests, one
scheduler that sees everything). Each run prints HAVE frames and REJECTs per piece delivered
(a CPU proxy: each frame wakes its receiver, and a REJECT answers a REQUEST that woke the holder).
Left out: TCP's own dynamics, handshakes, link churn and CPU. Frames take no time unless
`delay` is set: then every HAVE and REQUEST arrives that many seconds late (a REJECT and the
first byte of piece data still at once): the time frames spend queued in the lab (behind
piece data on the same connection, in a capped link's queue).

A W1 takes ~2 s of CPU here against ~3 min in the lab, so a policy can be tried over many seeds
before it goes to the lab, which has the last word. Usage (figures: bench/README.md):

    python3 bench/flowsim.py                      # W1 as the node is today, 5 seeds
    python3 bench/flowsim.py --set slots=2 --set queue=8 --runs 10
    python3 bench/flowsim.py --n 100 --trace      # utilisation of the downloaders' links by 10 s
    python3 bench/flowsim.py --set oracle=1 --set slots=2   # a global scheduler: matching's bound
"""

import argparse
import collections
import dataclasses
import os
import random
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "solution"))
from node import picker  # noqa: E402  (the node's own policy, pure: no gevent)

DT = 0.02  # seconds per step: a 256 KiB piece at 4 Mbit/s is 26 steps
PAYLOAD = 0.96  # TCP/IP headers take ~4% of a capped link (bench/shape.py's probe)


@dataclasses.dataclass
class Model:
    n: int = 30  # downloaders
    pieces: int = 128
    piece_bytes: int = 256 << 10
    mbit: float = 4.0  # every link's cap, both ways
    seeder_x: float = 1.0  # the seeder's cap as a multiple of the others'
    outbound: int = 8  # links each downloader opens (the seeder first), up to `inbound` per node
    inbound: int = 24
    # the node's policy; defaults as in solution/node (hub.py, conn.py), checked by the tests
    slots: int = 4  # UPLOAD_SLOTS
    queue: int = 4  # UPLOAD_QUEUE
    wait: float = 3.0  # UPLOAD_WAIT_S
    backoff: float = 1.0  # REJECTED_WAIT_S
    pipeline: int = 3  # PIPELINE_REQUESTS
    spread_wait: float = 0.5  # SPREAD_AFTER_WAIT_S; negative: no spread-first rule
    first_run: int = 4  # pieces per request before the link's rate is known (REQUEST_BYTES_MIN)...
    queue_s: float = 2.0  # ...then as many as it moves in this long, one at least (REQUEST_QUEUE_S)
    limit: float = 600.0  # seconds simulated at most
    delay: float = 0.0  # seconds a HAVE or a REQUEST takes to reach the other end (0: at once)
    have_window: float = 0.0  # a node tells its new pieces once per this long, together (0: each at once)
    # designs, not the node's (1: on); see Sim.steal and Sim.serve
    steal: int = 0  # an idle holder takes over half of what is left of a piece coming from another
    steal_min: float = 0.25  # ...if at least this much of a piece is left
    match: int = 0  # a free slot goes to the waiting requester with the fewest transfers coming in
    want_max: int = 0  # pieces a downloader has asked for and not got, over all its links (0: no cap)
    oracle: int = 0  # no requests: one global scheduler pushes pieces (see Sim.push); slots apply
    oracle_in: int = 2  # ...and a downloader gets at most this many pieces at once
    oracle_rarest: int = 1  # ...the rarest piece in the swarm first (0: a random one it lacks)
    oracle_fewest: int = 1  # ...to the neighbour with the fewest coming in (0: a random one)
    oracle_fresh: int = 1  # ...a complete node (the seeder) a piece it never sent, while there is one


class Peer:
    def __init__(self, i, cap, have):
        self.i, self.cap, self.have = i, cap, have
        self.shown = have  # what its neighbours know it holds (its HAVEs arrive `delay` late)
        self.untold = 0  # pieces it holds and has not told yet (have_window)
        self.requested = self.twice = self.sent = 0
        self.links = {}  # neighbour index -> Link
        self.slots = self.queued = 0
        self.done_at = 0.0 if have else None
        self.split = {}  # piece -> its parts still in flight, once split between two holders (steal)


class Link:
    """One end of a link: our requests to the neighbour, and its requests to us."""

    def __init__(self):
        self.mine = []  # pieces we asked the neighbour for
        self.ask_after = 0.0  # rejected: ask nothing before this
        self.measured = False  # piece data came on it (the node then sizes requests by its rate)
        self.rate = 0.0  # bytes/s of the last piece that came on it
        self.serves = []  # the neighbour's requests to us, waiting: [run, asked at, part]
        self.active = None  # being sent: [run, index in run, bytes left, piece began at, part]
        # part: bytes of a piece split by `steal` (truthy), else None


class Sim:
    def __init__(self, m, seed):
        self.m, self.rng = m, random.Random(seed)
        self.full = (1 << m.pieces) - 1
        cap = m.mbit * 1e6 / 8 * PAYLOAD
        self.peers = [Peer(0, cap * m.seeder_x, self.full)] + [Peer(i, cap, 0) for i in range(1, m.n + 1)]
        inbound = [0] * len(self.peers)
        for p in self.peers[1:]:
            others = [j for j in range(len(self.peers)) if j != p.i]
            self.rng.shuffle(others)
            others.sort(key=lambda j: j != 0)
            for j in others:
                if len(p.links) >= m.outbound:
                    break
                if j not in p.links and inbound[j] < m.inbound:
                    inbound[j] += 1
                    p.links[j], self.peers[j].links[p.i] = Link(), Link()
        self.t = 0.0
        self.steals = self.pushes = 0
        self.all_out = None  # when the seeder had begun sending every piece once
        self.dirty = set(range(len(self.peers)))
        self.trace = {}  # 10 s bucket -> [bytes up by downloaders, bytes down, steps]
        self._flows_key = self._rates = None
        self.later = collections.deque()  # frames in flight, in arrival order: (time, fn, args)
        self.have_frames = 0  # HAVE frames sent, one per neighbour that lacks a piece told
        self.rejects = 0  # REJECTs sent (each one a REQUEST and a REJECT that woke their receivers)
        phases = random.Random(-seed)  # its own: the topology and picks stay those of `seed`
        self.window = round(m.have_window / DT)
        self.phase = [phases.randrange(self.window) for _ in self.peers] if self.window else []

    # -- requesting ---------------------------------------------------------------------------
    def fill(self, p):
        if p.have == self.full:
            return
        links = list(p.links.items())
        self.rng.shuffle(links)
        swarm = [self.peers[j].shown for j, _ in links]
        out = sum(len(link.mine) for _, link in links)
        for j, link in links:
            while len(link.mine) < self.m.pipeline and self.t >= link.ask_after:
                if self.m.want_max and out >= self.m.want_max:
                    return
                mine = 0
                for q in link.mine:
                    mine |= 1 << q
                run = picker.pick(self.full & ~p.have, p.requested, self.peers[j].shown, swarm, self.rng,
                                  self.run_max(link), mine=mine, have_any=p.have != 0, twice=p.twice)
                if run is None:
                    if self.m.steal and not link.mine:
                        self.steal(p, j)
                    break
                span = picker.span_bits(*run)
                p.twice |= span & p.requested
                p.requested |= span
                pieces = list(range(run[0], run[0] + run[1]))
                out += len(pieces)
                link.mine += pieces
                self.send(self.request, p, j, pieces)

    def steal(self, p, j):
        """Holder j could serve p at once but has nothing new for it: j takes over half of the
        largest remainder of a piece p is getting from someone else (a byte range of it)."""
        holder = self.peers[j]
        if holder.slots >= self.m.slots or holder.queued:
            return
        best, left = None, self.m.steal_min * self.m.piece_bytes
        for i in p.links:
            active = self.peers[i].links[p.i].active if i != j else None
            if active is not None and active[2] > left:
                q = active[0][active[1]]
                if holder.have >> q & 1 and not p.have >> q & 1 and q not in p.split:
                    best, left = active, active[2]
        if best is None:
            return
        q, half = best[0][best[1]], best[2] / 2
        best[2] -= half
        best[4] = best[2]  # what is left of it is a part now
        p.split[q] = 2
        p.links[j].mine.append(q)
        holder.queued += 1
        holder.links[p.i].serves.append([[q], self.t, half])
        self.steals += 1
        self.dirty.add(j)

    def run_max(self, link):
        m = self.m
        if not link.measured:
            return m.first_run
        return max(1, min(m.first_run, int(link.rate * m.queue_s / m.piece_bytes)))

    def send(self, fn, *args):
        """A frame: fn(*args) happens at the other end, `delay` seconds from now (0: at once)."""
        if self.m.delay:
            self.later.append((self.t + self.m.delay, fn, args))  # one delay for all: in order
        else:
            fn(*args)

    def run_due(self):
        """Frames whose delay has passed reach the other end."""
        while self.later and self.later[0][0] <= self.t:
            _, fn, args = self.later.popleft()
            fn(*args)

    def request(self, p, j, run):
        holder = self.peers[j]
        if holder.slots >= self.m.slots and holder.queued >= self.m.queue:
            self.reject(holder, p.i, run)
        else:
            holder.queued += 1
            holder.links[p.i].serves.append([run, self.t, None])
            self.dirty.add(j)

    def reject(self, holder, i, run):
        self.rejects += 1
        p = self.peers[i]
        link = p.links[holder.i]
        for q in run:
            if q in link.mine:
                link.mine.remove(q)
                if not p.have >> q & 1 and q not in p.split:  # split: its parts are in flight
                    p.requested &= ~(1 << q)
        link.ask_after = self.t + self.m.backoff
        self.dirty.add(i)

    # -- serving ------------------------------------------------------------------------------
    def incoming(self, i):
        """Transfers under way to peer i (what `match` would need the requester to tell)."""
        return sum(1 for j in self.peers[i].links if self.peers[j].links[i].active is not None)

    def serve(self, h):
        m = self.m
        links = list(h.links.items())
        if m.match:  # else in link order (the node hands its slots out first come)
            links.sort(key=lambda item: self.incoming(item[0]))
        for i, link in links:
            while link.active is None and link.serves:
                run, asked, part = link.serves[0]  # part: bytes of a stolen piece, else None
                if h.slots < m.slots or part:  # a part was asked of an idle holder: at once
                    link.serves.pop(0)
                    h.queued -= 1
                    span = picker.span_bits(run[0], len(run))  # runs are consecutive pieces
                    if (part is None and 0 <= m.spread_wait <= self.t - asked and h.have == self.full
                            and span & h.sent == span and self.full & ~h.sent):
                        self.reject(h, i, run)  # the seeder sends each piece once first
                        continue
                    h.slots += 1
                    h.sent |= span
                    if h.i == 0 and h.sent == self.full and self.all_out is None:
                        self.all_out = self.t
                    link.active = [run, 0, float(part or m.piece_bytes), self.t, part]
                elif self.t - asked >= m.wait:
                    link.serves.pop(0)
                    h.queued -= 1
                    self.reject(h, i, run)
                else:
                    break

    # -- a global scheduler (an oracle: no node could know all this) ----------------------------
    def push(self):
        """Every free upload slot, anywhere, starts a piece to a neighbour that lacks it and has
        fewer than `oracle_in` coming in (the fewest first), never a piece already on its way
        to that neighbour, the rarest in the whole swarm first (holders plus copies in flight),
        and a complete node (the seeder) a piece it has not sent yet while there is one. No
        REJECT, no back-off, no duplicates: an upper bound on what matching alone can do in this
        topology."""
        m = self.m
        count = [0] * m.pieces
        for p in self.peers:
            bits = p.have | p.requested
            for q in range(m.pieces):
                count[q] += bits >> q & 1
        holders = [h for h in self.peers if h.have]
        self.rng.shuffle(holders)
        for h in holders:
            unsent = self.full & ~h.sent if m.oracle_fresh and h.have == self.full else 0
            while h.slots < m.slots:
                best = None
                for i, link in h.links.items():
                    d = self.peers[i]
                    if link.active is not None:  # one piece at a time on a link
                        continue
                    want = h.have & ~d.have & ~d.requested
                    if not want:
                        continue
                    inc = self.incoming(i)
                    if inc >= m.oracle_in:
                        continue
                    pool = want & unsent or want
                    q = min((q for q in range(m.pieces) if pool >> q & 1),
                            key=lambda q: (count[q] if m.oracle_rarest else 0, self.rng.random()))
                    key = (inc if m.oracle_fewest else 0, count[q] if m.oracle_rarest else 0,
                           self.rng.random())
                    if best is None or key < best[0]:
                        best = (key, i, q)
                if best is None:
                    break
                _, i, q = best
                d = self.peers[i]
                d.requested |= 1 << q
                count[q] += 1
                h.slots += 1
                h.sent |= 1 << q
                unsent &= ~(1 << q)
                h.links[i].active = [[q], 0, float(m.piece_bytes), self.t, None]
                self.pushes += 1

    # -- flows --------------------------------------------------------------------------------
    def rates(self, flows):
        """Max-min fair shares: fill every flow until its uplink or downlink is full, the
        tightest first (progressive filling)."""
        left = {("u", h.i): h.cap for h in self.peers}
        left.update({("d", h.i): h.cap for h in self.peers})
        rate, todo = [0.0] * len(flows), set(range(len(flows)))
        while todo:
            users = {}
            for k in todo:
                h, i = flows[k]
                users.setdefault(("u", h.i), []).append(k)
                users.setdefault(("d", i), []).append(k)
            res = min(users, key=lambda r: left[r] / len(users[r]))
            share = left[res] / len(users[res])
            for k in users[res]:
                h, i = flows[k]
                rate[k] = share
                left[("u", h.i)] -= share
                left[("d", i)] -= share
                todo.discard(k)
        return rate

    def step(self):
        flows = [(h, i) for h in self.peers for i, link in h.links.items() if link.active is not None]
        key = [(h.i, i) for h, i in flows]
        if key != self._flows_key:
            self._flows_key, self._rates = key, self.rates(flows)
        tr = self.trace.setdefault(int(self.t // 10) * 10, [0.0, 0.0, 0])
        tr[2] += 1
        self.t += DT
        for (h, i), r in zip(flows, self._rates):
            tr[0] += r * DT if h.i else 0.0
            tr[1] += r * DT
            link = h.links[i]
            link.active[2] -= r * DT
            if link.active[2] <= 0:
                run, k, _, began, part = link.active
                rate = None if part else self.m.piece_bytes / max(DT, self.t - began)
                if k + 1 < len(run):
                    link.active = [run, k + 1, float(self.m.piece_bytes), self.t, None]
                else:
                    link.active = None
                    h.slots -= 1
                self.dirty.add(h.i)
                self.arrive(self.peers[i], h.i, run[k], rate, part is not None)

    def arrive(self, p, frm, q, rate, part=False):
        link = p.links[frm]
        if rate is not None:  # a part's time says nothing of the link's rate
            link.measured, link.rate = True, rate
        if q in link.mine:
            link.mine.remove(q)
        if q in p.split:
            p.split[q] -= 1 if part else p.split[q]  # a whole copy (endgame) makes the parts moot
            if p.split[q]:
                return  # the other part is still coming
            del p.split[q]
        if not p.have >> q & 1:
            p.have |= 1 << q
            if p.have == self.full:
                p.done_at = self.t
            self.dirty.add(p.i)
            if self.window:
                p.untold |= 1 << q
            else:
                self.tell(p, 1 << q)

    def tell(self, p, pieces):
        """HAVEs of `pieces` to each neighbour that lacks one of them (as the node suppresses them)."""
        self.have_frames += sum(1 for j in p.links if pieces & ~self.peers[j].have)
        self.send(self.show, p, pieces)

    def show(self, p, pieces):
        """p's HAVEs reach its neighbours."""
        p.shown |= pieces
        self.dirty.update(p.links)

    def run(self):
        steps_per_s = round(1 / DT)
        tick = 0
        while any(p.done_at is None for p in self.peers) and self.t < self.m.limit:
            if tick % steps_per_s == 0:  # housekeeping: back-offs run out, queued requests time out
                self.dirty.update(range(len(self.peers)))
            tick += 1
            if self.window:  # each node tells what it got in its last window, on its own phase
                for p in self.peers:
                    if p.untold and tick % self.window == self.phase[p.i]:
                        self.tell(p, p.untold)
                        p.untold = 0
            self.run_due()
            if self.m.oracle:
                if self.dirty:
                    self.dirty = set()
                    self.push()
                self.step()
                continue
            for _ in range(3):
                dirty, self.dirty = self.dirty, set()
                for i in dirty:
                    self.serve(self.peers[i])
                for i in dirty:
                    self.fill(self.peers[i])
                if not self.dirty:
                    break
            self.step()
        return [p.done_at if p.done_at is not None else self.m.limit for p in self.peers[1:]]

    def t_min(self):
        m = self.m
        f, u = m.pieces * m.piece_bytes, m.mbit * 1e6 / 8
        return max(f / (u * m.seeder_x), f / u, m.n * f / (u * m.seeder_x + m.n * u))


def summary(done, t_min):
    done = sorted(done)
    return done[len(done) // 2] / t_min, done[-1] / t_min


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=Model.n)
    p.add_argument("--runs", type=int, default=5, help="seeds 1..runs (topology and picks)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a Model field, e.g. slots=2 (see Model)")
    p.add_argument("--trace", action="store_true", help="per 10 s: the links' use, downloaders' up and down")
    a = p.parse_args(argv)
    m = Model(n=a.n)
    for kv in a.set:
        k, v = kv.split("=", 1)
        if k not in {f.name for f in dataclasses.fields(Model)}:
            p.error(f"--set {kv}: no field {k!r} in Model")
        setattr(m, k, type(getattr(m, k))(v))
    res = []
    for seed in range(1, a.runs + 1):
        sim = Sim(m, seed)
        res.append(summary(sim.run(), sim.t_min()))
        out = "never" if sim.all_out is None else f"{sim.all_out / sim.t_min():.2f}x"
        haves, rejects = sim.have_frames / (m.n * m.pieces), sim.rejects / (m.n * m.pieces)
        print(f"seed {seed}: p50 {res[-1][0]:.2f}x  p100 {res[-1][1]:.2f}x T_min ({sim.t_min():.1f} s), "
              f"the seeder's every piece begun by {out}, {haves:.1f} HAVE frames and {rejects:.1f} "
              f"REJECTs per piece delivered"
              + (f", {sim.steals} pieces split" if m.steal else ""))
        if a.trace:
            cap = m.mbit * 1e6 / 8 * m.n
            for b, (up, down, steps) in sorted(sim.trace.items()):
                print(f"  {b:4d} s  downloaders' uplinks {up / (steps * DT) / cap:.2f}  downlinks {down / (steps * DT) / cap:.2f}")
    print(f"median of {a.runs}: p50 {statistics.median(r[0] for r in res):.2f}x  "
          f"p100 {statistics.median(r[1] for r in res):.2f}x")


if __name__ == "__main__":
    main()
