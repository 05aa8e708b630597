"""Host-side tests import the node package from solution/ and build swarms on 127.0.0.x."""

import hashlib
import os
import random
import sys

import pytest
from hypothesis import HealthCheck, settings

# Property tests that leave max_examples to the profile: 400 by default, 10^5 with
# HYPOTHESIS_PROFILE=deep (`make fuzz`, which CI runs).
settings.register_profile("unit", max_examples=400)
settings.register_profile("deep", max_examples=100_000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "unit"))

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "solution"))


class Torrent:
    """A random file and its FileInfo JSON, as the grader would write them."""

    def __init__(self, size, piece_size, seed=0):
        self.data = random.Random(seed).randbytes(size)
        self.size, self.piece_size = size, piece_size
        self.parts = [hashlib.sha1(self.data[i:i + piece_size]).hexdigest()
                      for i in range(0, size, piece_size)]

    def piece(self, i):
        return self.data[i * self.piece_size:(i + 1) * self.piece_size]

    def conf(self, peers=(), file_info=True):
        info = {"Size": self.size, "PartSize": self.piece_size, "Parts": self.parts} if file_info else None
        return {"Peers": list(peers), "FileInfo": info}


@pytest.fixture
def torrent_factory():
    return Torrent
