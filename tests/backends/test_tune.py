"""MetaSchedule tuning (optc.backends.tvm.tune): records in a persistent database, reused by a
later compile (report + shipped records), rule-schedule fallback, resume, RPC runner."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import optc
from optc.backends.tvm.tune import TuningRequest
from optc.cli_tune import tune

pytestmark = pytest.mark.tvm

MODEL = Path(__file__).resolve().parents[2] / "models" / "digits_cnn.onnx"
SHAPES = {"input": (1, 1, 8, 8)}


def _records(db: Path) -> int:
    files = list(db.rglob("database_tuning_record.json"))
    return sum(len(f.read_text().splitlines()) for f in files)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuning")
    lines = []
    summary = tune(MODEL, "cpu", request=TuningRequest(root=root, trials=6), input_shapes=SHAPES, log=lines.append)
    return root, summary, lines


def test_tuning_writes_records_and_progress(tuned):
    root, summary, lines = tuned
    assert summary["tasks"] >= 1 and summary["measured"] >= summary["tasks"]
    assert _records(root) == summary["measured"]
    assert any("best" in line and "ms" in line for line in lines)  # progress with best latency
    for task in summary["per_task"]:
        assert task["trials"] >= 1 and task["best_ms"] is not None and task["rule_ms"] is not None


def test_compile_reuses_database_and_ships_records(tuned, tmp_path):
    root, summary, _ = tuned
    db = tmp_path / "db"
    shutil.copytree(root, db)
    # Pretend optc's rule schedule were slower everywhere so every tuned record is applied
    # (normally a record is used only where it measured faster than the rule schedule).
    for base in db.glob("*/rule_baseline.json"):
        base.write_text(json.dumps({k: 1e9 for k in json.loads(base.read_text())}))
    report = optc.compile(MODEL, "cpu", tmp_path / "pkg", input_shapes=SHAPES, options=optc.CompileOptions.of(measure=False, tuning_db=db))
    assert report["verify"]["passed"]
    t = report["tuning"]
    assert t["functions_from_database"] == summary["tasks"]
    assert t["functions_rule_schedule"] == t["functions"] - summary["tasks"] > 0
    assert _records(tmp_path / "pkg" / "tuning") == summary["tasks"]
    assert optc.run(tmp_path / "pkg")  # the manifest's hashes cover tuning/

    # with the real baselines the database is still consulted; no database: no section
    report = optc.compile(MODEL, "cpu", tmp_path / "pkg2", input_shapes=SHAPES, options=optc.CompileOptions.of(measure=False, tuning_db=root))
    assert report["verify"]["passed"] and report["tuning"]["functions"] == t["functions"]
    report = optc.compile(MODEL, "cpu", tmp_path / "pkg3", input_shapes=SHAPES, options=optc.CompileOptions.of(measure=False, tuning_db=tmp_path / "empty"))
    assert "tuning" not in report


def test_untuned_functions_keep_rule_schedule(tuned, tmp_path):
    """Functions without a record get schedule_cpu's schedule, never the naive one."""
    from tvm import relax

    from optc.backends.tvm import lower, schedule
    from optc.backends.tvm import tune as tvm_tune
    from optc.frontend import bind_input_shapes, load_model
    from optc.targets import get_target

    root, summary, _ = tuned
    bound, specs = bind_input_shapes(load_model(MODEL), SHAPES)
    mod, params = lower.import_onnx(bound, specs)
    mod = relax.transform.BindParams("main", dict(zip(mod["main"].params[len(specs):], params)))(mod)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    tgt = lower.tvm_target(get_target("cpu"))
    state = tvm_tune.open_build(tgt, root)  # the database, an explicit input of the pipeline
    assert state is not None and tvm_tune.open_build(tgt, tmp_path / "none") is None
    log: list = []
    with tgt:
        schedule.relax_pipeline(tgt, log=log, pre_schedule=state.apply)(mod)
    assert log and all(rec["rule"] is not None for rec in log)  # tuned or rule-scheduled, never naive
    assert state.total_funcs == len(log)
    assert sum(rec["rule"] == "pre-scheduled" for rec in log) == len(state.used)  # tuned ones


def test_resume_continues_same_database(tuned, tmp_path):
    root, summary, _ = tuned
    db = tmp_path / "db"
    shutil.copytree(root, db)
    before = _records(db)
    lines = []
    again = tune(MODEL, "cpu", request=TuningRequest(root=db, trials=6), input_shapes=SHAPES, log=lines.append)
    assert again["measured"] == 0 and _records(db) == before  # budget already spent: nothing to do
    more = tune(MODEL, "cpu", request=TuningRequest(root=db, trials=12), input_shapes=SHAPES, log=lines.append)
    assert any("resuming" in line for line in lines)
    assert more["measured"] > 0 and _records(db) == before + more["measured"]
    assert all(p["trials"] >= q["trials"] for p, q in zip(more["per_task"], summary["per_task"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_rpc_runner_against_loopback_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                               "--port", str(port), "--port-end", str(port + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # its popen worker dies with the group
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        summary = tune(MODEL, "cpu", request=TuningRequest(root=tmp_path, trials=2, rpc=f"127.0.0.1:{port}"),
                       input_shapes=SHAPES, log=lambda _: None)
        assert summary["measured"] >= 1
        assert all(t["best_ms"] is not None for t in summary["per_task"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


# Slack over --tune-seconds for the whole compile (frontend + passes + tuning + final build):
# the first search round of a task cannot be interrupted (a 64-schedule evolutionary round is
# a few seconds on 2 cores), nor can the final build (a reserve is kept for it; see
# tune_module's docstring).
BUDGET_SLACK_S = 8.0


def test_clock_keeps_the_longest_span_and_an_end_without_a_start_adds_nothing():
    from optc.backends.tvm.tune import _Clock, _Span

    span = _Span()
    span.end()
    assert span.longest == 0.0
    span.add(2.0)
    span.add(1.0)
    span.start()
    span.end()
    assert span.longest == 2.0
    clock = _Clock()
    clock.build_start()  # no search started (no callback ended yet): nothing counted
    clock.run_end()
    time.sleep(0.05)
    clock.callback()  # the cost-model update: from the runner's end to the callback
    assert clock.search.longest == 0.0 and 0.05 <= clock.update.longest < 5.0
    assert clock.next_round() == clock.update.longest
    clock.reset()
    assert clock.next_round() == 0.0


def test_tune_seconds_budget_holds_including_final_build(tmp_path):
    budget = 20.0
    t0 = time.perf_counter()
    report = optc.compile(MODEL, "cpu", tmp_path / "pkg", input_shapes=SHAPES, options=optc.CompileOptions.of(measure=False, tune=100000, tune_seconds=budget, tuning_db=tmp_path / "db"))
    wall = time.perf_counter() - t0
    st = report["stage_seconds"]
    through_build = st["frontend"] + st["passes"] + st["build"]
    tuned = report["tuning"]["tuned"]
    assert tuned["seconds_budget"] == budget and tuned["budget"]["final_build_reserve_s"] > 0
    # over the budget by at most one uninterruptible search round + model update (as this run
    # measured them: a loaded machine makes them longer) or the fixed slack
    slack = max(BUDGET_SLACK_S, tuned["budget"]["longest_search_s"] + tuned["budget"]["longest_update_s"] + 2.0)
    assert through_build <= budget + slack, (through_build, tuned)
    assert wall - st.get("verify", 0) <= budget + slack + 1.0
    # the budget, not the trial count, ended tuning: most of it was spent
    assert through_build >= 0.6 * budget
    assert report["verify"]["passed"]
