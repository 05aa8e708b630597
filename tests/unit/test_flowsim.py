"""bench/flowsim.py, the fluid model of the scale bench: its physics, and that it models the node."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
flowsim = pytest.importorskip("flowsim")

from node import conn, hub, peers  # noqa: E402


def test_the_model_defaults_are_the_nodes_constants():
    m = flowsim.Model()
    assert (m.slots, m.queue, m.wait) == (hub.UPLOAD_SLOTS, hub.UPLOAD_QUEUE, hub.UPLOAD_WAIT_S)
    assert (m.pipeline, m.spread_wait) == (hub.PIPELINE_REQUESTS, hub.SPREAD_AFTER_WAIT_S)
    assert (m.first_run, m.queue_s) == (hub.REQUEST_BYTES_MIN // m.piece_bytes, hub.REQUEST_QUEUE_S)
    assert m.backoff == conn.REJECTED_WAIT_S
    assert (m.outbound, m.inbound) == (peers.MAX_OUTBOUND, peers.MAX_INBOUND)


def test_flows_share_links_max_min_fairly():
    sim = flowsim.Sim(flowsim.Model(n=3, outbound=0), seed=1)
    a, b, c, d = sim.peers
    for p in sim.peers:
        p.cap = 1.0
    # a sends to b and c; d sends to c too: c's downlink is the tightest, split 1/2 and 1/2,
    # and a's uplink gives what c's flow leaves to b
    got = sim.rates([(a, b.i), (a, c.i), (d, c.i)])
    assert got == pytest.approx([0.5, 0.5, 0.5])
    got = sim.rates([(a, b.i), (a, c.i), (a, d.i)])
    assert got == pytest.approx([1 / 3] * 3)


def test_one_downloader_takes_the_file_at_its_links_payload_rate():
    m = flowsim.Model(n=1, pieces=16)
    sim = flowsim.Sim(m, seed=1)
    (done,) = sim.run()
    payload_rate = m.mbit * 1e6 / 8 * flowsim.PAYLOAD
    # each transfer ends on a step's boundary: up to one step lost per piece
    assert done == pytest.approx(m.pieces * m.piece_bytes / payload_rate + m.pieces * flowsim.DT / 2,
                                 abs=m.pieces * flowsim.DT / 2)
    # the seeder began its last fresh piece one piece's time before the end
    assert sim.all_out == pytest.approx(done - m.piece_bytes / payload_rate, abs=2 * flowsim.DT)


def test_a_swarm_completes_and_never_beats_the_bound():
    m = flowsim.Model(n=8, pieces=32)
    sim = flowsim.Sim(m, seed=3)
    done = sim.run()
    assert all(t < m.limit for t in done), "every downloader gets every piece"
    assert all(p.have == sim.full for p in sim.peers)
    assert min(done) >= sim.t_min() / flowsim.PAYLOAD - flowsim.DT


def test_an_unknown_model_field_is_named():
    with pytest.raises(SystemExit):
        flowsim.main(["--runs", "1", "--set", "slotz=2"])


@pytest.mark.parametrize("design", [dict(steal=1), dict(match=1), dict(steal=1, match=1),
                                    dict(want_max=2, slots=2, queue=0), dict(oracle=1, slots=2)])
def test_designs_still_deliver_every_byte(design):
    m = flowsim.Model(n=8, pieces=32, **design)
    sim = flowsim.Sim(m, seed=3)
    done = sim.run()
    assert sim.steals > 0 or not m.steal, "an idle holder took over part of a piece"
    assert all(t < m.limit for t in done) and all(p.have == sim.full for p in sim.peers)
    assert not any(p.split for p in sim.peers), "every split piece's two parts arrived"
    assert min(done) >= sim.t_min() / flowsim.PAYLOAD - flowsim.DT


def test_the_oracle_sends_every_piece_once_and_respects_its_limits():
    m = flowsim.Model(n=8, pieces=32, oracle=1, slots=2, oracle_in=1)
    sim = flowsim.Sim(m, seed=2)
    most_in = 0
    while any(p.done_at is None for p in sim.peers) and sim.t < m.limit:
        sim.push()
        sim.step()
        most_in = max(most_in, max(sim.incoming(p.i) for p in sim.peers[1:]))
        assert all(p.slots <= m.slots for p in sim.peers)
    assert all(p.have == sim.full for p in sim.peers)
    assert sim.pushes == m.n * m.pieces, "no downloader got a piece twice"
    assert most_in == 1


def test_frame_delay_holds_back_requests_and_haves():
    m = flowsim.Model(n=2, pieces=8, delay=0.5)
    sim = flowsim.Sim(m, seed=1)
    seeder, a, b = sim.peers
    sim.fill(a)
    assert a.links[0].mine and not seeder.links[a.i].serves, "the request is on its way"
    sim.t = 0.49
    sim.run_due()
    assert not seeder.links[a.i].serves
    sim.t = 0.5
    sim.run_due()
    assert seeder.links[a.i].serves, "and arrives after the delay"
    sim.arrive(a, 0, 3, rate=None)
    assert a.have == 1 << 3 and a.shown == 0, "a holds piece 3; its neighbours do not know yet"
    sim.t = 1.0
    sim.run_due()
    assert a.shown == 1 << 3


def test_frame_delay_slows_a_swarm_and_every_byte_still_arrives():
    fast, slow = (flowsim.Sim(flowsim.Model(n=8, pieces=32, delay=d), seed=3) for d in (0.0, 0.5))
    t_fast, t_slow = max(fast.run()), max(slow.run())
    assert all(p.have == slow.full for p in slow.peers) and t_slow < slow.m.limit
    assert t_slow > t_fast


def test_a_have_window_tells_pieces_together_in_fewer_frames():
    each, batched = (flowsim.Sim(flowsim.Model(n=8, pieces=32, have_window=w), seed=3) for w in (0.0, 2.0))
    each.run(), batched.run()
    assert all(p.have == batched.full for p in batched.peers) and max(p.done_at for p in batched.peers) < batched.m.limit
    assert 0 < batched.have_frames < 0.8 * each.have_frames
