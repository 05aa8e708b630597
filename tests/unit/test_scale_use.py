"""bench/scale.py's uplink sampler: what share of the swarm's upload capacity was in use when."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
scale = pytest.importorskip("scale")
scale_report = pytest.importorskip("scale_report")


class FakeLab:
    """Two hosts whose bridge ports count what each sent: host 0 at 250 kB/s, host 1 idle
    for the first 5 s, then at 500 kB/s (both capped at 4 Mbit/s = 500 kB/s)."""

    def __init__(self):
        self.t = 0

    def port_counters(self, unit="packets"):
        assert unit == "bytes"
        t, self.t = self.t, self.t + 1
        return {0: (250_000 * t, 0), 1: (500_000 * max(0, t - 5), 0)}


def sampled(lab, seconds):
    use = scale.UplinkUse(lab, [4, 4])
    for t in range(seconds + 1):  # as run() does once per USE_SAMPLE_S, without the clock
        use.sample(t * scale.USE_SAMPLE_S)
    return use


def test_uplink_use_per_bin_is_the_share_of_all_caps():
    assert (scale.USE_SAMPLE_S, scale.USE_BIN_S) == (1.0, 5.0)  # the figures below assume these
    use = sampled(FakeLab(), 12)
    assert use.by_bin() == [0.25, 0.75, 0.75]  # the last bin: 2 s only, still a share


def test_report_means_over_whole_bins():
    r = {"uplink_use": [0.25, 0.75, 0.75], "uplink_bin_s": 5.0}
    assert scale_report.used(r) == pytest.approx(7 / 12)
    assert scale_report.used(r, 5) == 0.25
    assert scale_report.share(scale_report.used({"times": []})) == "–"  # a run recorded before sampling


def test_a_run_too_short_to_sample_reports_nothing_rather_than_failing():
    use = sampled(FakeLab(), 0)
    assert use.by_bin() == []
    assert scale_report.used({"uplink_use": use.by_bin(), "uplink_bin_s": 5.0}) is None


def test_the_seeders_own_uplink_is_reported_up_to_the_last_completion():
    use = sampled(FakeLab(), 12)
    sent, share = use.seeder(10.0)  # samples after the end (the stop) do not count
    assert sent == 2_500_000
    assert share == pytest.approx(0.5)  # 250 of its 500 kB/s


def test_an_event_is_timed_from_t0_by_the_time_the_node_logged():
    lines = ["ts=2026-12-02T12:00:01.000Z level=info event=listening addr=x",
             "ts=2026-12-02T12:01:08.250Z level=info event=every_piece_sent bytes_out=1"]
    t0 = scale.calendar.timegm((2026, 12, 2, 12, 0, 1, 0, 0, 0))
    assert scale._logged_at(lines, "every_piece_sent", t0) == pytest.approx(67.25)
    assert scale._logged_at(lines, "complete", t0) is None
    assert scale_report.multiple(67.25, 67.25) == "1.00x" and scale_report.multiple(None, 67.1) == "–"
