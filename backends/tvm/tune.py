"""MetaSchedule tuning of the fused TIR functions that optc's CPU pipeline builds.

Tasks are the PrimFuncs present right where :func:`schedule.schedule_cpu` runs in
``schedule.relax_pipeline`` (after optc's layout conversion, legalization and fusion), so a
tuned schedule matches a function the default compile builds. Both take the module from
:func:`schedule.fuse_for_schedule`, which keeps the two in step when the pipeline changes.

* **Database**: a MetaSchedule ``JSONDatabase`` per target (kind, triple, mcpu, cores) under
  ``~/.cache/optc/tuning/<target key>/`` (``OPTC_TUNING_DIR`` or ``--db`` moves it). Records
  are appended per measured candidate, so an interrupted run loses nothing and a rerun
  continues (trials already recorded for a workload count against its budget). Beside it,
  ``rule_baseline.json`` holds the latency of optc's rule-based schedule for each tuned
  workload, measured by the same runner.
* **Build**: :func:`apply_database` replaces a function by its best tuned schedule when the
  database has one that beats the rule schedule; every other function keeps
  ``schedule_cpu``'s schedule (never the naive one).
* **Builder**: in-process (:class:`InProcessBuilder`); the stock LocalBuilder's fresh worker
  processes spend 26-48 s importing TVMScript and hit its 30 s timeout. Exports a shared
  library (cross-compiled with ``aarch64-linux-gnu-g++`` for AArch64 targets).
* **Runner**: in-process LocalRunner measurement, or (``rpc=HOST:PORT`` / ``tracker=HOST:PORT``
  with ``key``) an in-process RPC runner that keeps one session to the server for the whole
  run (:func:`make_rpc_runner`); AArch64 targets need one (a board, or optc's aarch64
  ``optc_rpc_server`` under qemu-user, see ``rpc.py``: emulated times, only good for checking;
  their records go to ``<target key>-emulated`` beside the target's database, which builds never
  read).
* **Budget** (``seconds``): see :func:`tune_module`; ``optc compile --tune-seconds`` counts the
  whole compile from its start, the final build included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from optc.errors import UsageError

from . import schedule

DB_FILES = ("database_workload.json", "database_tuning_record.json")
BASELINE = "rule_baseline.json"
# Functions with fewer estimated FLOPs than this are not worth trials (elementwise glue).
MIN_TASK_FLOPS = 20_000
# Time kept for the build after tuning (``tune_module(final_build=True)``): this many times
# the task extraction (which runs the same Relax pipeline up to scheduling) plus a constant.
# Measured here: extraction 0.48 s vs build + export 3.1 s (ResNet-18), 0.44 vs 1.8 s (MiniLM).
FINAL_BUILD_FACTOR = 8.0
FINAL_BUILD_MIN_S = 2.0


def default_root() -> Path:
    env = os.environ.get("OPTC_TUNING_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "optc" / "tuning"


def target_key(tgt) -> str:
    """Directory name for a TVM target: readable parts plus a hash of the full target."""
    attrs = tgt.attrs
    parts = [tgt.kind.name, str(attrs.get("mtriple", "") or "host"), str(attrs.get("mcpu", "") or "generic"),
             f"{attrs.get('num-cores', '') or 'x'}c"]
    text = json.dumps(dict(tgt.export()), sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts)) + "-" + digest


EMULATED_DB_SUFFIX = "-emulated"  # records measured on an emulated remote (qemu): a database of their own


def db_dir(tgt, root: str | os.PathLike | None = None) -> Path:
    return Path(root).expanduser() / target_key(tgt) if root else default_root() / target_key(tgt)


def open_database(path: Path, create: bool):
    from tvm.s_tir import meta_schedule as ms

    if not create and not all((path / f).is_file() for f in DB_FILES):
        return None
    path.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(str(path / DB_FILES[0]), str(path / DB_FILES[1]),
                                    allow_missing=True, module_equality="structural")


def task_module(func):
    """The IRModule a task (and its database workload) is keyed by."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


def _shash(mod) -> str:
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x}"


def _load_baseline(path: Path) -> dict:
    try:
        return json.loads((path / BASELINE).read_text())
    except (OSError, ValueError):
        return {}


def _best_record(database, mod):
    if not database.has_workload(mod):
        return None
    records = database.get_top_k(database.commit_workload(mod), 1)
    return records[0] if records else None


def _mean(run_secs) -> float:
    vals = [float(x) for x in run_secs]
    return sum(vals) / len(vals) if vals else float("inf")


def apply_database(mod, target, database, baseline: dict, used: list):
    """Replace PrimFuncs of ``mod`` by their best tuned schedule where the database has one
    that beats the rule schedule's measured latency; appends (workload module, record) of
    every applied record to ``used``."""
    from tvm import s_tir, tirx

    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or schedule.is_scheduled(func):
            continue
        tmod = task_module(func)
        rec = _best_record(database, tmod)
        if rec is None or rec.run_secs is None:
            continue
        rule = baseline.get(_shash(tmod))
        if rule is not None and _mean(rec.run_secs) >= rule:
            continue  # optc's rule schedule measured faster
        sch = s_tir.Schedule(tmod)
        try:
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
        except Exception:  # noqa: BLE001 - a stale record: keep the rule schedule
            continue
        updates[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        if func.attrs is not None and "global_symbol" in func.attrs:
            updates[gv] = updates[gv].with_attr("global_symbol", func.attrs["global_symbol"])
        else:
            updates[gv] = updates[gv].without_attr("global_symbol")
        used.append((tmod, rec))
    for gv, func in updates.items():
        mod[gv] = func
    return mod


@dataclass(frozen=True)
class TuningRequest:
    """What a build asks of MetaSchedule - an explicit input of ``lower.build``: the databases'
    ``root`` (None: :func:`default_root`), and with ``trials`` > 0, tuning first (budget
    ``seconds`` counted from ``start``, ``time.time()`` of the compile's start; runner options
    ``rpc``/``tracker``/``key`` as for :func:`tune_module`)."""

    root: str | None = None
    trials: int = 0
    seconds: float | None = None
    start: float | None = None
    rpc: str | None = None
    tracker: str | None = None
    key: str | None = None

    def tune(self, mod, tgt) -> dict | None:
        """Tune ``mod`` if trials were asked for; the summary (None: no tuning)."""
        if not self.trials:
            return None
        return tune_module(mod, tgt, self, final_build=True)


def open_build(tgt, root=None) -> "BuildTuning | None":
    """The tuning database for ``tgt`` under ``root`` ready to apply to a build (its
    :meth:`BuildTuning.apply` goes before ``schedule_cpu``, see ``schedule.relax_pipeline``),
    or None when there is none."""
    path = db_dir(tgt, root)
    database = open_database(path, create=False)
    if database is None:
        return None
    return BuildTuning(path, database, _load_baseline(path))


@dataclass
class BuildTuning:
    """A tuning database applied to one build, and what the build took from it."""

    path: Path
    database: object = None
    baseline: dict = field(default_factory=dict)
    used: list = field(default_factory=list)
    total_funcs: int = 0

    def apply(self, mod, target):
        """Replace functions of ``mod`` by their tuned schedule where that is better."""
        from tvm import tirx

        self.total_funcs = sum(1 for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc))
        return apply_database(mod, target, self.database, self.baseline, self.used)

    def report(self, summary: dict | None, dest: Path | None = None) -> dict:
        """The report's ``tuning`` section; with ``dest``, the applied records are written
        there as a JSON database shipped with the package."""
        info = self.info()
        if summary is not None:
            info["tuned"] = {k: v for k, v in summary.items() if k != "per_task"}
        if self.used and dest is not None:
            self.export(dest)
            info["shipped"] = dest.name + "/"
        return info

    def info(self) -> dict:
        return {"database": str(self.path), "functions": self.total_funcs,
                "functions_from_database": len(self.used),
                "functions_rule_schedule": self.total_funcs - len(self.used)}

    def export(self, dest: Path) -> None:
        """Write the applied records as a JSON database (``dest/``) shippable with a package."""
        from tvm.s_tir import meta_schedule as ms

        db = open_database(dest, create=True)
        for tmod, rec in self.used:
            wl = db.commit_workload(tmod)
            db.commit_tuning_record(ms.database.TuningRecord(rec.trace, wl, rec.run_secs, rec.target,
                                                             rec.args_info))


# ----------------------------------------------------------------------------- tasks
def extract_tasks(mod, tgt) -> list[tuple[str, object, float]]:
    """(name, PrimFunc, estimated FLOPs) of each fused function of the Relax ``mod`` (after
    DecomposeOpsForInference) as optc's pipeline builds it, largest first."""
    from tvm import tirx
    from tvm.s_tir.analysis import estimate_tir_flops

    with tgt:
        fused = schedule.fuse_for_schedule(mod, tgt)
    tasks = []
    for gv, func in fused.functions_items():
        if isinstance(func, tirx.PrimFunc) and not schedule.is_scheduled(func):  # optc's own kernels stay
            try:
                flops = float(estimate_tir_flops(task_module(func)))
            except Exception:  # noqa: BLE001
                flops = 0.0
            tasks.append((gv.name_hint, func, flops))
    tasks.sort(key=lambda t: -t[2])
    return tasks


# ----------------------------------------------------------------------------- builder / runner
def _export_shared(rt_mod, aarch64: bool) -> str:
    """A candidate's library in a fresh directory (the runner's clean-up removes it)."""
    path = os.path.join(tempfile.mkdtemp(prefix="optc-ms-"), "cand.so")
    if aarch64:
        from .arm import export_aarch64

        export_aarch64(rt_mod, Path(path))
    else:
        rt_mod.export_library(path)
    return path


def _import_intrinsics() -> None:
    """``import tvm.s_tir.tensor_intrin`` (MetaSchedule's TuneContext does it) with a fast
    ``inspect.stack``: TVMScript calls it per intrinsic, and the stock one looks up source
    files through every loaded module (minutes once torch/onnx are imported).

    Why a patch (the one allowance of ``tests/test_architecture.py``): each of the ~500
    ``@T.prim_func`` intrinsics calls ``inspect.stack()``, whose ``getmodule`` rescans every
    entry of ``sys.modules`` (~2,000: ``tvm_ffi`` imports torch) for each frame whose file is no
    module's, i.e. the ``<frozen importlib._bootstrap>`` frames that every import puts on the
    stack: 46 s stock vs 4.6 s here (2-core EPYC, after ``import torch, onnx, tvm``). TVM has no
    argument to skip the import (``TuneContext.__init__`` does it unconditionally) or the stack
    walk; a thread or a child process changes neither the frozen frames nor the module count, and
    the intrinsics must be registered in this process."""
    import inspect

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    stock = inspect.stack

    def fast_stack(context=1):
        frame, out = sys._getframe(1), []
        while frame is not None:
            out.append(inspect.FrameInfo(frame, frame.f_code.co_filename, frame.f_lineno,
                                         frame.f_code.co_name, None, None))
            frame = frame.f_back
        return out

    inspect.stack = fast_stack
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = stock


def _build_candidate(mod, target):
    """MetaSchedule's ``default_build`` without its ``import tvm.s_tir.tensor_intrin`` (which
    parses every CUDA/ARM intrinsic with TVMScript: minutes in a process that has imported
    torch/onnx, as ``inspect.stack`` scans every module; fp32 CPU schedules need none)."""
    from tvm import tirx
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tirx.build(mod, target=target)


def make_builder(deadline: float | None, aarch64: bool, clock=None):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder

    @derived_object
    class InProcessBuilder(PyBuilder):
        """Builds candidates in this process (no worker start-up); out of time: fails fast."""

        def build(self, build_inputs):
            if clock is not None:
                clock.build_start()
            results = []
            for inp in build_inputs:
                if deadline is not None and time.time() > deadline:
                    results.append(BuilderResult(None, "optc: tuning time budget reached"))
                    continue
                try:
                    rt_mod = _build_candidate(inp.mod, inp.target)
                    results.append(BuilderResult(_export_shared(rt_mod, aarch64), None))
                except Exception as err:  # noqa: BLE001 - a failing candidate
                    results.append(BuilderResult(None, f"optc in-process build: {err}"[:2000]))
            return results

    return InProcessBuilder()


def _measuring_runner(measure, label: str, deadline: float | None, clock, on_error=None, on_close=None):
    """A MetaSchedule runner that measures each candidate in this process with
    ``measure(runner_input) -> costs``; past ``deadline`` a candidate fails with a budget
    message; ``on_error`` runs after a failed measurement, ``on_close`` when the tuning is done
    with the runner (its ``close()``: drops a remote session)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture

    @derived_object
    class InProcessRunner(PyRunner):
        def run(self, runner_inputs):
            futures = []
            for inp in runner_inputs:
                if deadline is not None and time.time() > deadline:
                    futures.append(LocalRunnerFuture(error_message="optc: tuning time budget reached"))
                    continue
                try:
                    futures.append(LocalRunnerFuture(res=[float(x) for x in measure(inp)]))
                except Exception as err:  # noqa: BLE001 - a failing candidate (or a lost session)
                    if on_error is not None:
                        on_error()
                    futures.append(LocalRunnerFuture(error_message=f"{label}: {err}"[:2000]))
            if clock is not None:
                clock.run_end()
            return futures

        def close(self) -> None:
            if on_close is not None:
                on_close()

    return InProcessRunner()


def make_local_runner(evaluator, deadline: float | None = None, clock=None):
    """MetaSchedule's LocalRunner measurement, in this process (its popen workers take tens of
    seconds to start and import TVM; a crashing candidate would take this process down, which
    MetaSchedule's sampled, post-processed schedules do not do in practice)."""
    from tvm.s_tir.meta_schedule.runner.local_runner import _worker_func

    def measure(inp):
        args = [a.as_json() for a in inp.args_info]
        return _worker_func(None, None, None, evaluator, 1, inp.artifact_path, inp.device_type, args)

    return _measuring_runner(measure, "optc in-process run", deadline, clock)


def make_rpc_runner(remote, evaluator, deadline: float | None = None, session_timeout: float = 0, clock=None):
    """MetaSchedule measurement on a TVM RPC server, from this process, over one session
    reused for every candidate (reopened after a failure): upload the candidate library, load
    it, fill random arguments with the server's ``random_fill_for_measure``, time it with
    ``time_evaluator`` there. The stock RPCRunner opens a session per candidate from popen
    workers that take tens of seconds to import TVM; under qemu each session costs ~1 s more."""
    import uuid

    from tvm.s_tir.meta_schedule.runner.rpc_runner import default_alloc_argument, default_run_evaluator

    state = {"sess": None}

    def measure(inp):
        if state["sess"] is None:
            state["sess"] = remote.connect(timeout=session_timeout)
        sess = state["sess"]
        name = f"cand-{uuid.uuid4().hex[:10]}.so"
        sess.upload(inp.artifact_path, name)
        rt_mod = sess.load_module(name)
        dev = sess.device(inp.device_type, 0)
        args = default_alloc_argument(sess, dev, [a.as_json() for a in inp.args_info], 1)
        costs = default_run_evaluator(sess, rt_mod, dev, evaluator, args)
        with contextlib.suppress(Exception):
            sess.remove(name)
        return costs

    def drop_session():
        state["sess"] = None

    def close():  # a server serves one session at a time: let it go now, not at garbage collection
        import gc

        drop_session()
        gc.collect()

    return _measuring_runner(measure, "optc RPC run", deadline, clock, on_error=drop_session, on_close=close)


def make_runner(rpc: str | None = None, tracker: str | None = None, key: str | None = None,
                number: int = 3, repeat: int = 1, deadline: float | None = None, clock=None):
    """In-process LocalRunner measurement, or measurement on a TVM RPC server (``rpc``
    HOST:PORT, or a ``tracker`` HOST:PORT with ``key``), see optc.backends.tvm.rpc."""
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=20,
                                          enable_cpu_cache_flush=False)
    if not rpc and not tracker:
        return make_local_runner(evaluator, deadline, clock)
    from . import rpc as optc_rpc

    remote = optc_rpc.Remote.from_options(rpc, key, tracker)
    # the session lives as long as the tuning (the server kills it after its -timeout=)
    timeout = max(600.0, (deadline - time.time()) + 120.0) if deadline else 0
    return make_rpc_runner(remote, evaluator, deadline, session_timeout=timeout, clock=clock)


def _measure_rule(funcs, target, builder, runner) -> list[float | None]:
    """Latency (s) of optc's rule-based schedule for each PrimFunc, with the tuning runner."""
    from tvm.s_tir import meta_schedule as ms

    inputs, args = [], []
    for func in funcs:
        mod = schedule.schedule_cpu(task_module(func), target)
        inputs.append(ms.builder.BuilderInput(mod, target))
        args.append(ms.arg_info.ArgInfo.from_prim_func(func))
    built = builder.build(inputs)
    out: list[float | None] = [None] * len(funcs)
    pending = []
    for i, res in enumerate(built):
        if res.error_msg:
            print(f"optc tune: rule schedule not built: {res.error_msg[:300]}", file=sys.stderr)
        if res.error_msg is None:
            pending.append((i, res.artifact_path))
    if pending:
        futures = runner.run([ms.runner.RunnerInput(path, "cpu", args[i]) for i, path in pending])
        for (i, _), fut in zip(pending, futures):
            r = fut.result()
            if r.error_msg is None and r.run_secs:
                out[i] = _mean(r.run_secs)
            elif r.error_msg:
                print(f"optc tune: rule schedule not measured: {r.error_msg[:300]}", file=sys.stderr)
    return out


# ----------------------------------------------------------------------------- tuning
def _strategy(trials: int, population: int = 256):
    """Random replay for a handful of trials; a smaller-than-stock evolutionary search
    otherwise (the stock 2048-schedule population costs minutes per round on 2 cores)."""
    from tvm.s_tir import meta_schedule as ms

    if trials < 16:
        return ms.search_strategy.ReplayTrace()
    return ms.search_strategy.EvolutionarySearch(population_size=population, init_min_unmeasured=min(32, population),
                                                 genetic_num_iters=2)


def _budgeted(make_inner, deadline: float, clock):
    """A search strategy that delegates to ``make_inner()`` but proposes no batch (which ends
    its task) once the time left is shorter than its longest search so far: MetaSchedule's
    first round searches every task before any measure callback runs, and on 2 cores one
    evolutionary search round takes seconds, so a budget checked only in callbacks overran by
    (tasks x search time)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

    @derived_object
    class BudgetedSearch(PySearchStrategy):
        def __init__(self):
            self.inner = make_inner()

        def _initialize_with_tune_context(self, context) -> None:
            self.inner._initialize_with_tune_context(context)

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None):
            self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

        def post_tuning(self) -> None:
            self.inner.post_tuning()

        def generate_measure_candidates(self):
            now = time.time()
            if now + clock.next_round() > deadline:
                return None
            out = self.inner.generate_measure_candidates()
            clock.search.add(time.time() - now)
            return out

        def notify_runner_results(self, measure_candidates, results) -> None:
            self.inner.notify_runner_results(measure_candidates, results)

        def clone(self):
            return BudgetedSearch()

    return BudgetedSearch()


def _record_counts(database, mods) -> list[int]:
    counts = []
    for mod in mods:
        if not database.has_workload(mod):
            counts.append(0)
            continue
        wl = database.commit_workload(mod)
        counts.append(len(database.get_top_k(wl, 1 << 20)))
    return counts


def tune_module(mod, tgt, request: TuningRequest, *, max_tasks: int | None = None, log=None, seed: int = 0,
                final_build: bool = False) -> dict:
    """Tune the fused functions of the Relax ``mod`` (after DecomposeOpsForInference, weights
    bound) for the TVM target ``tgt`` with ``request.trials`` measured candidates in all, into
    the database under ``request.root``, measured by the runner ``request.rpc``/``tracker``/
    ``key`` selects (none: in-process). Returns a summary dict.

    Time budget: with ``request.seconds``, everything from ``request.start`` (``time.time()``,
    default: now)
    ends by ``start + seconds``: task extraction, the rule-schedule baseline, the search, and,
    with ``final_build``, the build that follows (a reserve of :data:`FINAL_BUILD_FACTOR` x the
    extraction time + :data:`FINAL_BUILD_MIN_S` is kept for it). The budget is checked per
    candidate by the builder and the runner (out of time: fail fast, no build/run) and after
    every measured batch, where tuning stops when the next round's search plus cost-model
    update, as measured on earlier rounds, would not fit."""
    from tvm.s_tir import meta_schedule as ms

    trials, seconds, root = request.trials, request.seconds, request.root
    rpc, tracker, key = request.rpc, request.tracker, request.key
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.time()
    start = t0 if request.start is None else request.start
    end = start + seconds if seconds else None
    deadline = end
    _import_intrinsics()
    path = db_dir(tgt, root)
    aarch64 = str(tgt.attrs.get("mtriple", "") or "").startswith("aarch64")
    if aarch64 and not (rpc or tracker):
        raise UsageError("tuning an AArch64 target needs a board: --rpc HOST:PORT or --rpc-tracker HOST:PORT "
                         "(without one: `optc rpc-server -t TARGET` serves an emulated board here)")
    emulated = ""
    if rpc or tracker:
        from .rpc import Remote, probe_emulation

        emulated = probe_emulation(Remote.from_options(rpc, key, tracker))
    if emulated:  # emulation times say nothing about the board: never mix them with its records
        path = path.with_name(path.name + EMULATED_DB_SUFFIX)
        log(f"the remote is emulated ({emulated}): records go to {path}, which builds do not read")
    database = open_database(path, create=True)

    t_extract = time.time()
    all_tasks = extract_tasks(mod, tgt)
    t_extract = time.time() - t_extract
    reserve = 0.0
    if end is not None and final_build:
        reserve = FINAL_BUILD_MIN_S + FINAL_BUILD_FACTOR * t_extract
        deadline = end - reserve
    tasks = [t for t in all_tasks if t[2] >= MIN_TASK_FLOPS]
    if max_tasks is None:  # at least ~16 trials per task: fewer tasks than that are not worth it
        max_tasks = max(1, trials // 16) if trials >= 16 else max(1, trials)
    tasks = tasks[:max_tasks]
    summary = {"database": str(path), "functions": len(all_tasks), "tasks": len(tasks), "trials": trials,
               "seconds_budget": seconds, **({"emulated": emulated} if emulated else {})}
    if end is not None:
        summary["budget"] = {"started": round(t0 - start, 2), "final_build_reserve_s": round(reserve, 2),
                             "tuning_deadline_s": round(deadline - start, 2)}
    if not tasks or trials <= 0:
        summary.update(measured=0, seconds=round(time.time() - t0, 1), per_task=[])
        return summary
    mods = [task_module(f) for _, f, _ in tasks]
    done = _record_counts(database, mods)
    total_flops = sum(t[2] for t in tasks)
    # per-task share of the trials, proportional to FLOPs (at least a few each)
    shares = [max(2, int(round(trials * t[2] / total_flops))) for t in tasks]
    remaining = [max(0, s - d) for s, d in zip(shares, done)]
    clock = _Clock()
    builder = make_builder(deadline, aarch64, clock)
    runner = make_runner(rpc, tracker, key, deadline=deadline, clock=clock)

    baseline = _load_baseline(path)
    need = [i for i, m in enumerate(mods) if _shash(m) not in baseline]
    if need:
        log(f"measuring optc's rule schedule for {len(need)} task(s)")
        secs = _measure_rule([tasks[i][1] for i in need], tgt, builder, runner)
        for i, s in zip(need, secs):
            if s is not None:
                baseline[_shash(mods[i])] = s
        (path / BASELINE).write_text(json.dumps(baseline, indent=1))

    todo = [i for i in range(len(tasks)) if remaining[i] > 0]
    if done and any(done):
        log(f"resuming: {sum(done)} candidate(s) already in {path}")
    clock.reset()  # the rule-schedule measurement is not a search round
    progress = _Progress(tasks, mods, baseline, log, deadline, database, clock)
    if todo and deadline is not None and time.time() >= deadline:
        log("  time budget spent before the search: not tuning")
        todo = []
    if todo:
        ctxs = []
        # a short budget per task: a smaller population (a 256-schedule evolutionary round
        # took ~20 s on a 2-core host for a small conv, 64 a few seconds)
        per_task_s = (deadline - time.time()) / len(todo) if deadline is not None else None
        population = 256 if per_task_s is None or per_task_s >= 60 else 64
        for i in todo:
            name, func, _ = tasks[i]
            ctxs.append(ms.TuneContext(mod=mods[i], target=tgt, space_generator="post-order-apply",
                                       search_strategy=_strategy(remaining[i]) if deadline is None else
                                       _budgeted(lambda n=remaining[i]: _strategy(n, population), deadline, clock),
                                       task_name=name,
                                       rand_state=seed + i, num_threads=max(1, schedule._Params(tgt).cores),
                                       logger=None).clone())
        per_iter = max(1, min(32, max(remaining[i] for i in todo)))
        progress.ids = todo
        clock.callback_end()  # the first round's search (and tune_tasks' set-up) counts too
        with tempfile.TemporaryDirectory(prefix="optc-ms-work-") as work:
            ms.tune_tasks(tasks=ctxs, task_weights=[tasks[i][2] / total_flops for i in todo], work_dir=work,
                          max_trials_global=sum(remaining[i] for i in todo),
                          max_trials_per_task=max(remaining[i] for i in todo),
                          num_trials_per_iter=per_iter, builder=builder, runner=runner, database=database,
                          cost_model="xgb", measure_callbacks=ms.MeasureCallback.create("default") + [progress.callback()],
                          task_scheduler="gradient", module_equality="structural")
    runner.close()
    per_task = []
    counts = _record_counts(database, mods)
    for i, (name, _, flops) in enumerate(tasks):
        rec = _best_record(database, mods[i])
        best = _mean(rec.run_secs) if rec is not None and rec.run_secs is not None else None
        per_task.append({"name": name, "flops": flops, "trials": counts[i],
                         "best_ms": None if best is None else best * 1e3,
                         "rule_ms": None if baseline.get(_shash(mods[i])) is None else baseline[_shash(mods[i])] * 1e3})
    if "budget" in summary:  # what the budget checks could not interrupt (longest of each)
        summary["budget"].update(longest_search_s=round(clock.search.longest, 2),
                                 longest_update_s=round(clock.update.longest, 2))
    summary.update(measured=sum(counts) - sum(done), seconds=round(time.time() - t0, 1), per_task=per_task,
                   tuned_better=sum(1 for p in per_task if p["best_ms"] is not None and
                                    (p["rule_ms"] is None or p["best_ms"] < p["rule_ms"])))
    return summary


class _Span:
    """The longest of the spans from a start to the next end (an end without a start adds none)."""

    def __init__(self):
        self.longest = 0.0
        self._start = None

    def add(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)

    def start(self) -> None:
        self._start = time.time()

    def end(self) -> None:
        if self._start is not None:
            self.add(time.time() - self._start)
            self._start = None


class _Clock:
    """Durations of the parts of a MetaSchedule round that the budget checks cannot interrupt:
    the search that proposes a batch (from the end of a measure callback to the builder) and
    the cost-model update (from the runner's end to our callback)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.search, self.update = _Span(), _Span()

    def build_start(self):
        self.search.end()

    def run_end(self):
        self.update.start()

    def callback(self):
        self.update.end()

    def callback_end(self):
        self.search.start()

    def next_round(self) -> float:
        """Seconds the next round needs beyond its (interruptible) builds and runs."""
        return self.search.longest + self.update.longest


class _Progress:
    """A line per measured batch: task, trials, best latency so far vs the rule schedule."""

    def __init__(self, tasks, mods, baseline, log, deadline, database, clock=None):
        self.tasks, self.mods, self.baseline, self.log = tasks, mods, baseline, log
        self.deadline, self.database = deadline, database
        self.clock = clock or _Clock()
        self.ids: list[int] = []
        self.best: dict[int, float] = {}
        self.count: dict[int, int] = {}
        self.stopped = False

    def callback(self):
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        outer = self

        @derived_object
        class _Callback(PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
                outer.apply(task_scheduler, task_id, runner_results)

        return _Callback()

    def apply(self, scheduler, task_id, runner_results):
        self.clock.callback()
        try:
            self._apply(scheduler, task_id, runner_results)
        finally:
            self.clock.callback_end()

    def _apply(self, scheduler, task_id, runner_results):
        i = self.ids[task_id] if task_id < len(self.ids) else task_id
        name = self.tasks[i][0]
        ok = [_mean(r.run_secs) for r in runner_results if r.error_msg is None and r.run_secs]
        self.count[i] = self.count.get(i, 0) + len(runner_results)
        if ok:
            self.best[i] = min(self.best.get(i, float("inf")), min(ok))
        rule = self.baseline.get(_shash(self.mods[i]))
        best = self.best.get(i)
        self.log(f"  [{i + 1}/{len(self.tasks)}] {name}: {self.count[i]} trials, best "
                 + (f"{best * 1e3:.4f} ms" if best is not None else "-")
                 + (f" (rule schedule {rule * 1e3:.4f} ms)" if rule else "")
                 + f"; {len(ok)}/{len(runner_results)} ok")
        now = time.time()
        if self.deadline is not None and not self.stopped and now + self.clock.next_round() > self.deadline:
            self.stopped = True
            # The tasks end themselves: their BudgetedSearch proposes no more batches. (Calling
            # scheduler.terminate_task here breaks MetaSchedule's gradient scheduler, which
            # may already have picked a task while joining another.)
            self.log("  time budget reached: stopping" if now > self.deadline else
                     f"  time budget: {self.deadline - now:.1f} s left, a search round takes "
                     f"{self.clock.next_round():.1f} s: stopping")


def tune_onnx(model, inputs, target, request: TuningRequest, *, log=None) -> dict:
    """Tune an ONNX model (shapes bound, pipeline already run) for an optc ``Target`` as
    ``request`` asks (see :func:`tune_module`)."""
    from . import lower

    mod, _ = lower.prepare_module(model, inputs, target, embed_params=True)
    tgt = lower.tvm_target(target)
    return tune_module(mod, tgt, request, log=log)
