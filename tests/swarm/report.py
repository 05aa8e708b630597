"""Reporting of swarm runs: one human line per run, a JSON line per run in
tmp/swarm-results.jsonl (for trends across commits), and a summary table for the CLI."""
import json
import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_PATH = REPO_ROOT / "tmp" / "swarm-results.jsonl"


def human_size(n):
    """1536 -> '1.5KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024


def _secs(value):
    return "-" if value is None else f"{value:.2f}s"


def line(result):
    """The one-line report of a run."""
    status = "ok" if result.ok else "FAIL"
    extra = f" chaos_actions={result.chaos_actions}" if result.chaos_actions else ""
    extra += f" warnings={len(result.warnings)}" if result.warnings else ""
    return (f"[swarm] {status} scenario={result.scenario} seed={result.seed} "
            f"nodes={result.nodes} size={human_size(result.size)} piece={human_size(result.piece)} "
            f"time_to_sync={_secs(result.time_to_sync)} start_spread={_secs(result.start_spread)} "
            f"setup={_secs(result.setup_s)}{extra} run={result.runid}")


def _git_rev():
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def append_jsonl(result, path=RESULTS_PATH):
    """Append RESULT as one JSON object (plus time, git revision, image) to PATH."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = dict(asdict(result), ok=result.ok, when=time.strftime("%Y-%m-%dT%H:%M:%S"),
                  git=_git_rev(), image=os.environ.get("IMAGE", ""))
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def table(results):
    """A fixed-width table of runs plus min/median/max time_to_sync of the passing ones."""
    rows = [f"{'run':>3} {'seed':>10} {'nodes':>5} {'size':>9} {'piece':>9} "
            f"{'sync':>8} {'spread':>7} result"]
    for i, r in enumerate(results, 1):
        rows.append(f"{i:>3} {r.seed:>10} {r.nodes:>5} {human_size(r.size):>9} "
                    f"{human_size(r.piece):>9} {_secs(r.time_to_sync):>8} "
                    f"{_secs(r.start_spread):>7} {'ok' if r.ok else 'FAIL'}")
    times = sorted(r.time_to_sync for r in results if r.ok)
    if times:
        rows.append(f"passed {len(times)}/{len(results)}; time_to_sync min {times[0]:.2f}s "
                    f"median {times[len(times) // 2]:.2f}s max {times[-1]:.2f}s")
    else:
        rows.append(f"passed 0/{len(results)}")
    return "\n".join(rows)
