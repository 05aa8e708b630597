"""Execute one SwarmPlan against real containers and judge it.

Life of a run (`SwarmRun.execute`):
  1. prepare: temp dir with the correct file, each node's /data.bin variant and torrent.conf;
     an --internal network on a random 172.28-31.x.0/24; "copy" nodes created and `docker cp`'d.
  2. start: every container started in random order from parallel threads (`docker run -d`, or
     `docker start` for pre-created ones); a log follower attached to each as it starts.
  3. wait: until every node logged `event=complete` (chaos running meanwhile, if planned), bounded
     by the SPEC timeout counted from the last start.
  4. verify: size and SHA-1 of /data.bin read *inside* every container, and every container still
     running.
  5. cleanup (always, also on error or Ctrl-C): containers, network and temp dir, by name.
"""
import contextlib
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import docker_cli as dc
from .chaos import RestartChaos
from .content import materialize, write_master
from .plan import ip_of, render_conf
from .watch import CompletionWatcher

LABEL_KEY = "p2p-test"
NAME_PREFIX = "p2pt"
# Parallel `docker run`s: beyond ~8 the engine serializes anyway and 2 cores just thrash.
START_WORKERS = 8
VERIFY_WORKERS = 8
# Hashing 1 GB inside a container takes ~3 s; 120 s covers a loaded host.
VERIFY_TIMEOUT_S = 120.0
LOG_TAIL_LINES = 40
DEFAULT_IMAGE = "p2p-node:latest"


@dataclass
class RunResult:
    """Outcome of one run; `failures` empty means it passed."""
    scenario: str
    seed: int
    runid: str
    nodes: int
    size: int
    piece: int
    time_to_sync: float = None     # s from the last start returning to the last node complete
    #                                (under chaos: to the last node's first completion)
    start_spread: float = None     # s from the first start issued to the last start returned
    setup_s: float = None
    failures: list = field(default_factory=list)
    warnings: list = field(default_factory=list)     # odd but within the contract
    node_times: dict = field(default_factory=dict)   # name -> s to first completion
    chaos_actions: int = 0
    summary: str = ""

    @property
    def ok(self):
        return not self.failures


class SwarmRun:
    """One execution of PLAN with IMAGE; `execute()` returns a RunResult and always cleans up."""

    def __init__(self, plan, image=None, log_level=None, out=print, workdir=None, logs_dir=None):
        self.plan, self.out = plan, out
        self.image = image or os.environ.get("IMAGE", DEFAULT_IMAGE)
        self.log_level, self.workdir = log_level, workdir
        self.logs_dir = logs_dir  # every container's whole log is saved here, pass or fail
        self.runid = uuid.uuid4().hex[:8]
        self.net = f"{NAME_PREFIX}-{self.runid}"
        self.names = [f"{NAME_PREFIX}-{self.runid}-{n.index}" for n in plan.nodes]
        self.rng = random.Random(f"run:{plan.scenario}:{plan.seed}")
        self.tmp, self.prefix, self.info = None, None, None
        self.watcher, self.chaos = CompletionWatcher(), None
        self.result = RunResult(plan.scenario, plan.seed, self.runid, len(plan.nodes),
                                plan.size, plan.piece, summary=plan.summary())
        self._run_args, self._started = {}, {}   # name -> monotonic time its start returned

    # ---- the run -------------------------------------------------------------------------
    def execute(self):
        """Run the whole life cycle; never raises for a node failure (see result.failures)."""
        try:
            began = time.monotonic()
            self._prepare()
            self.result.setup_s = round(time.monotonic() - began, 2)
            t_last_start = self._start_all()
            self._wait(t_last_start)
            self._verify()
        except dc.DockerError as exc:
            self.result.failures.append(f"docker: {exc}")
        finally:
            self._teardown()
        return self.result

    def _prepare(self):
        self.tmp = tempfile.mkdtemp(prefix=f"{self.net}-", dir=self.workdir)
        master = os.path.join(self.tmp, "master.bin")
        self.info = write_master(master, self.plan.size, self.plan.piece,
                                 seed=f"data:{self.plan.seed}")
        self.prefix = dc.create_network(self.net, f"{LABEL_KEY}={self.runid}", self.rng)
        for node, name in zip(self.plan.nodes, self.names):
            self._prepare_node(node, name, master)

    def _prepare_node(self, node, name, master):
        data = materialize(node.content, master, self.info,
                           os.path.join(self.tmp, f"data-{node.index}.bin"),
                           seed=f"garbage:{self.plan.seed}:{node.index}")
        conf = os.path.join(self.tmp, f"torrent-{node.index}.conf")
        with open(conf, "w") as fh:
            json.dump(render_conf(self.plan, node, self.prefix, self.info.conf()), fh)
        args = ["--name", name, "--label", f"{LABEL_KEY}={self.runid}", "--hostname", name,
                "--network", self.net, "--ip", ip_of(self.prefix, node),
                "-v", f"{conf}:/torrent.conf:ro"]
        if self.log_level:
            args += ["-e", f"NODE_LOG_LEVEL={self.log_level}"]
        for pair in os.environ.get("SWARM_NODE_ENV", "").split():  # e.g. "NODE_DISCOVERY=off"
            args += ["-e", pair]
        args += os.environ.get("SWARM_DOCKER_ARGS", "").split()  # e.g. "--no-healthcheck"
        if node.delivery == "bind":
            args += ["-v", f"{data}:/data.bin"]
        if node.delivery == "copy":
            dc.docker("create", *args, self.image)
            dc.docker("cp", data, f"{name}:/data.bin", timeout=dc.BULK_TIMEOUT_S)
            os.unlink(data)
        self._run_args[name] = args

    def _start_one(self, name, t_first=None):
        node = self.plan.nodes[self.names.index(name)]
        if node.start_delay_s and t_first is not None:
            time.sleep(max(0.0, t_first + node.start_delay_s - time.monotonic()))
        if node.delivery == "copy":
            dc.docker("start", name)
        else:
            dc.docker("run", "-d", *self._run_args[name], self.image)
        done = time.monotonic()
        self._started[name] = done
        self.watcher.follow(name)
        return done

    def _start_all(self):
        """Start every container, random order, in parallel; return when the last start returned."""
        order = self.rng.sample(self.names, len(self.names))
        order.sort(key=lambda n: self.plan.nodes[self.names.index(n)].start_delay_s)  # stable
        t_first = time.monotonic()
        pool = ThreadPoolExecutor(START_WORKERS)
        try:
            ends = list(pool.map(lambda n: self._start_one(n, t_first), order))
        finally:  # on error or Ctrl-C: no new starts; in-flight ones finish (bounded)
            pool.shutdown(wait=True, cancel_futures=True)
        t_last = max(ends)
        self.result.start_spread = round(t_last - t_first, 3)
        return t_last

    def _wait(self, t_last_start):
        """Wait for all to complete (chaos meanwhile); record time_to_sync or a failure."""
        deadline = t_last_start + self.plan.timeout_s
        if self.plan.chaos:
            self.chaos = RestartChaos(self.names, self.plan.chaos, self.rng, self._started)
            self.chaos.start()
        chaos = bool(self.plan.chaos)
        t_all = self.watcher.wait_all(self.names, deadline, fail_on_exit=not chaos, ever=chaos)
        if self.chaos:
            t_all = self._soak_and_settle(t_all, deadline)
        _, first, _ = self.watcher.snapshot()
        self.result.node_times = {n: round(t - t_last_start, 3) for n, t in first.items()}
        if t_all is None:
            self._record_incomplete()
        else:
            self.result.time_to_sync = round(t_all - t_last_start, 3)

    def _soak_and_settle(self, t_all, deadline):
        """Keep restarting for the plan's soak time even once synced, then stop the chaos and
        wait until every node is complete again. Return t_all, or None if they never settle."""
        if t_all is not None:
            soak_end = min(deadline, self.chaos.started + self.plan.chaos.soak_s)
            time.sleep(max(0.0, soak_end - time.monotonic()))
        self.result.chaos_actions = len(self.chaos.stop())
        if self.chaos.ignored_sigterm(young=False):
            self.result.failures.append(
                f"SIGTERM did not stop the node with exit 0: {self.chaos.ignored_sigterm(False)}")
        if self.chaos.ignored_sigterm(young=True):
            self.result.warnings.append(
                f"SIGTERM right after start ignored: {self.chaos.ignored_sigterm(True)}")
        if self.chaos.failed():
            self.result.failures.append(f"restarts refused by Docker: {self.chaos.failed()}")
        if t_all is None or self.watcher.wait_all(self.names, deadline, False) is None:
            return None
        return t_all

    def _record_incomplete(self):
        done, _, exited = self.watcher.snapshot()
        missing = [n for n in self.names if done.get(n) is None]
        why = f"exited: {sorted(exited)}" if exited and not self.plan.chaos else \
            f"timeout {self.plan.timeout_s:.0f}s"
        self.result.failures.append(f"not complete ({why}): {missing}")

    # ---- verification --------------------------------------------------------------------
    def _digest(self, name):
        """(size, sha1) of /data.bin read inside container NAME, or an error string."""
        proc = dc.docker("exec", name, "sh", "-c", "stat -c %s /data.bin && sha1sum /data.bin",
                         check=False, timeout=VERIFY_TIMEOUT_S)
        lines = proc.stdout.split()
        if proc.returncode != 0 or len(lines) < 2:
            return f"exec failed rc={proc.returncode}: {proc.stderr.strip()[:200]}"
        return int(lines[0]), lines[1]

    def _verify(self):
        """Every container: /data.bin has the right size and SHA-1, and it is still running."""
        expect = (self.info.size, self.info.sha1)
        with ThreadPoolExecutor(VERIFY_WORKERS) as pool:
            digests = dict(zip(self.names, pool.map(self._digest, self.names)))
        for name, got in digests.items():
            if isinstance(got, str):
                self.result.failures.append(f"{name}: {got}")
            elif got != expect:
                self.result.failures.append(f"{name}: /data.bin size={got[0]} sha1={got[1]}, "
                                            f"want size={expect[0]} sha1={expect[1]}")
        for name, (running, code) in dc.states(self.names).items():
            if not running:
                self.result.failures.append(f"{name}: not running (exit code {code})")

    # ---- failure report and cleanup ------------------------------------------------------
    def _bad_names(self):
        """Containers named in any failure (all of them if a failure names none)."""
        text = " ".join(self.result.failures)
        bad = [n for n in self.names if f"'{n}'" in text or f"{n}:" in text]
        return bad or self.names

    def _dump_logs(self):
        self.out(f"--- {self.plan.scenario} seed={self.plan.seed} run={self.runid} FAILED; "
                 f"plan: {self.result.summary}")
        self.out(f"    reproduce: {self.plan.reproduce()}")
        for failure in self.result.failures:
            self.out(f"    {failure[:2000]}")
        for name in [n for n in self._bad_names() if n in self._started][:12]:
            node = self.plan.nodes[self.names.index(name)]
            self.out(f"--- last {LOG_TAIL_LINES} log lines of {name} "
                     f"({ip_of(self.prefix, node)}, {node.content.describe(self.plan.n_pieces)}):")
            self.out(dc.logs_tail(name, LOG_TAIL_LINES))

    def _save_logs(self):
        """DIR/RUNID/NAME.log for each started container (a slow run that passed is worth
        reading too), plus the plan."""
        where = os.path.join(self.logs_dir, self.runid)
        os.makedirs(where, exist_ok=True)
        with open(os.path.join(where, "plan.txt"), "w") as f:
            f.write(f"{self.plan.reproduce()}\n{self.result.summary}\n")
        for name in self._started:
            with open(os.path.join(where, f"{name}.log"), "w") as f:
                f.write(dc.logs_tail(name, "all") + "\n")
        self.out(f"[swarm] logs of run {self.runid} saved in {where}")

    def _teardown(self):
        """Stop watchers and chaos, report a failure, remove everything this run created.
        Runs with Ctrl-C/SIGTERM deferred: it is bounded, and half a cleanup leaks containers."""
        with signals_deferred():
            self.watcher.stop()
            if self.chaos:
                self.chaos.stop()
            try:
                if self.result.failures and self.prefix:
                    self._dump_logs()
                if self.logs_dir and self._started:
                    self._save_logs()
            finally:
                self._remove_all()

    def _remove_all(self):
        dc.remove_containers(self.names)
        # a create the engine was still processing when we removed by name shows up here
        if dc.remove_labelled(f"{LABEL_KEY}={self.runid}"):
            self.out(f"[swarm] removed late containers of run {self.runid}")
        if not dc.remove_network(self.net):
            dc.remove_labelled(f"{LABEL_KEY}={self.runid}")
            dc.remove_network(self.net)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT/SIGTERM until the block ends (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    handlers = {sig: signal.signal(sig, lambda signo, _f: pending.append(signo))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if pending:
            raise KeyboardInterrupt
