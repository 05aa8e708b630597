"""CLI: run a scenario K times and print time-to-sync per run.

    python -m tests.swarm.run --scenario many-source --runs 5 [--seed 42]
    python -m tests.swarm.run --scenario simple-extra --nodes 60 --size 16M --runs 1
    python -m tests.swarm.run --scenario simple-extra --seed 203 --log-level debug --save-logs DIR
    python -m tests.swarm.run --cleanup-stale     # remove leftovers of killed runs (p2pt-*)

Run k uses seed S+k (S random unless given), so any line of the table is reproduced with
`--seed <its seed> --runs 1`. Exit status 1 if any run failed.
"""
import argparse
import random
import signal
import sys

from . import docker_cli as dc
from .harness import LABEL_KEY, NAME_PREFIX, SwarmRun
from .report import append_jsonl, line, table
from .scenarios import SCENARIOS, make_plan

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text):
    """'64K' -> 65536, '1G' -> 1073741824, '1500' -> 1500."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1] if text and text[-1] in UNITS else ""
    return int(float(text[:len(text) - len(unit)]) * UNITS[unit])


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tests.swarm.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="simple-random")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--seed", type=int, help="seed of the first run (default: random)")
    p.add_argument("--nodes", type=int, help="pin the node count")
    p.add_argument("--size", type=parse_size, help="pin the file size (e.g. 16M)")
    p.add_argument("--piece", type=parse_size, help="pin the piece size (e.g. 64K)")
    p.add_argument("--timeout", type=float, help="override the SPEC timeout (seconds)")
    p.add_argument("--image", help="image to run (default: $IMAGE or p2p-node:latest)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--save-logs", metavar="DIR",
                   help="save every node's whole log under DIR/RUNID/, pass or fail")
    p.add_argument("--cleanup-stale", action="store_true",
                   help=f"remove containers labelled {LABEL_KEY} and networks {NAME_PREFIX}-*")
    return p.parse_args(argv)


def cleanup_stale():
    """Remove what killed runs of this harness left behind (found by its label/name prefix)."""
    names = dc.docker("ps", "-aq", "--filter", f"label={LABEL_KEY}").stdout.split()
    dc.remove_containers(names)
    nets = dc.docker("network", "ls", "--format", "{{.Name}}",
                     "--filter", f"name={NAME_PREFIX}-").stdout.split()
    for net in nets:
        if net.startswith(f"{NAME_PREFIX}-"):
            dc.remove_network(net)
    print(f"removed {len(names)} containers, {len(nets)} networks")


def _sigterm(_signo, _frame):
    raise KeyboardInterrupt  # unwind through every finally: cleanup by name


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    if args.cleanup_stale:
        cleanup_stale()
        return 0
    reason = dc.unavailable_reason()
    if reason:
        print(f"docker unavailable: {reason}", file=sys.stderr)
        return 2
    base = args.seed if args.seed is not None else random.randrange(10 ** 6)
    results = []
    for k in range(args.runs):
        plan = make_plan(args.scenario, base + k, nodes=args.nodes, size=args.size,
                         piece=args.piece)
        if args.timeout:
            plan.timeout_s = args.timeout
        result = SwarmRun(plan, image=args.image, log_level=args.log_level,
                          logs_dir=args.save_logs).execute()
        print(line(result), flush=True)
        for warning in result.warnings:
            print(f"  warning: {warning[:1000]}", flush=True)
        append_jsonl(result)
        results.append(result)
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the run's containers, network and temp dir were removed",
              file=sys.stderr)
        sys.exit(130)
