"""SPEC scenario "simple-docker-compose": scripts/compose-test.sh with both compose flavours, the v2
plugin `docker compose` (what most users run) and v1 `docker-compose`. A missing flavour is
skipped on a developer's machine, and fails under CI (CI=true), where scripts/docker-setup.sh
installs both: a skipped v2 run must not pass for a tested one."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "compose-test.sh"
# The script bounds itself (30 s sync + compose calls); this only catches a hung script.
SCRIPT_TIMEOUT_S = 600

pytestmark = [pytest.mark.swarm, pytest.mark.compose]


def _installed(flavour):
    if flavour == "docker-compose":
        return shutil.which("docker-compose") is not None
    return subprocess.run(["docker", "compose", "version"], capture_output=True,
                          timeout=30).returncode == 0


@pytest.mark.parametrize("flavour", ["docker compose", "docker-compose"])
def test_compose_seeder_leecher(image, flavour):
    if not _installed(flavour):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{flavour} is not installed; scripts/docker-setup.sh installs it")
        pytest.skip(f"{flavour} is not installed (bash scripts/docker-setup.sh installs it)")
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S,
                          env={**os.environ, "COMPOSE": flavour, "IMAGE": image})
    print(proc.stdout, proc.stderr, sep="\n")
    assert proc.returncode == 0, f"compose-test.sh failed with {flavour}:\n{proc.stderr[-4000:]}"
    assert "diff tmp/data1.bin tmp/data2.bin is silent" in proc.stdout
