"""bench/report.py: what the benchmark's table and bench/results/latest.json say, from a run's raw results."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPORT = Path(__file__).resolve().parent.parent / "bench" / "report.py"


@pytest.fixture(scope="module")
def report() -> ModuleType:
    # bench/ is scripts, not a package: load the module by its path, under a name of its own.
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def service(
    *,
    status: float,
    e2e: float,
    p50: float,
    p99: float,
    hook50: float,
    hook99: float,
    idle: float,
    peak: float,
) -> dict[str, Any]:
    return {
        "status": {"rps": status},
        "e2e": {"tasks_per_s": e2e, "peak_memory_mb": peak},
        "start_latency": {"p50_ms": p50, "p99_ms": p99},
        "webhook": {"p50_ms": hook50, "p99_ms": hook99},
        "idle_memory_mb": idle,
    }


def library(
    *, enqueue: float, drain: float, e2e: float, p50: float, p99: float, idle: float
) -> dict[str, Any]:
    return {
        "enqueue_per_s": enqueue,
        "drain_tasks_per_s": drain,
        "e2e_tasks_per_s": e2e,
        "start_latency": {"p50_ms": p50, "p99_ms": p99},
        "idle_memory_mb": idle,
    }


def full_run() -> dict[str, Any]:
    return {
        "taskd": {
            "submit": {"rps": 6000.0},
            "drain": {"tasks_per_s": 1500.0},
            "drain_two_workers": {"tasks_per_s": 1800.0},
            "queued_memory": {"tasks": 3000, "mib_per_1000": 1.25},
            "e2e_split": {"tasks_per_s": 1400.0},
            "full": {
                **service(status=4000, e2e=1200, p50=1.0, p99=2.0, hook50=1.5, hook99=3.0, idle=40, peak=60),
                "sse": {"p50_ms": 10.0, "p99_ms": 25.0},
            },
        },
        "taskd_rate_limited": {"rps": 2000.0},
        "reference_api": {"rps": 500.0},
        "reference_prefork": service(
            status=1500, e2e=600, p50=4.0, p99=6.0, hook50=1.0, hook99=1.4, idle=170, peak=190
        ),
        "reference_threads": service(
            status=1400, e2e=200, p50=5.0, p99=5.5, hook50=0.9, hook99=1.2, idle=100, peak=110
        ),
        "peers": {
            "fast": library(enqueue=3000, drain=1700, e2e=1100, p50=2.0, p99=9.0, idle=60),
            "lean": library(enqueue=1500, drain=500, e2e=1300, p50=3.0, p99=4.0, idle=25),
        },
    }


def test_each_row_takes_the_better_reference_pool_and_the_best_library_for_that_row(report: ModuleType):
    rows = report.latest(full_run(), {"cpus": 2}, "wrk")["rows"]

    assert list(rows) == list(report.KEYS)
    # Higher is better for throughput: the reference's faster pool, the library that sent the most.
    assert rows["submit_rps"] == {
        "taskd": 6000.0,
        "reference": 500.0,
        "best_peer": 3000,
        "best_peer_name": "fast",
    }
    assert rows["e2e_tasks_per_s"] == {
        "taskd": 1200,
        "reference": 600,
        "best_peer": 1300,
        "best_peer_name": "lean",
    }
    # Lower is better for latency and memory, and each row picks its own best library.
    assert rows["start_p50_ms"] == {
        "taskd": 1.0,
        "reference": 4.0,
        "best_peer": 2.0,
        "best_peer_name": "fast",
    }
    assert rows["start_p99_ms"] == {
        "taskd": 2.0,
        "reference": 5.5,
        "best_peer": 4.0,
        "best_peer_name": "lean",
    }
    assert rows["idle_memory_mib"] == {
        "taskd": 40,
        "reference": 100,
        "best_peer": 25,
        "best_peer_name": "lean",
    }


def test_the_libraries_have_no_webhook_nor_rate_limited_figure(report: ModuleType):
    rows = report.latest(full_run(), {"cpus": 2}, "wrk")["rows"]

    assert rows["webhook_p50_ms"] == {
        "taskd": 1.5,
        "reference": 0.9,
        "best_peer": None,
        "best_peer_name": None,
    }
    assert rows["submit_rps_rate_limited"] == {
        "taskd": 2000.0,
        "reference": 500.0,
        "best_peer": None,
        "best_peer_name": None,
    }


def test_latest_json_is_the_machine_the_generator_and_the_rows_in_strict_json(report: ModuleType):
    results = full_run()
    results["peers"]["lean"]["start_latency"]["p99_ms"] = float("nan")  # no job completed in time
    results["taskd"]["full"]["webhook"]["p50_ms"] = float("nan")

    latest = report.latest(results, {"cpus": 2, "python": "3.11.7"}, "aiohttp")

    assert set(latest) == {"machine", "generator", "rows", "targets"}
    assert latest["machine"] == {"cpus": 2, "python": "3.11.7"}
    assert latest["generator"] == "aiohttp"
    json.dumps(latest, allow_nan=False)
    # A figure that could not be measured is null, and never the best.
    assert latest["rows"]["webhook_p50_ms"]["taskd"] is None
    assert latest["rows"]["start_p99_ms"]["best_peer_name"] == "fast"


def test_latest_json_keeps_the_machines_floor_measured_in_the_same_run(report: ModuleType):
    floor = {
        "idle_s": 0.01,
        "http_get": {"back_to_back": {"requests": 2000, "p50_ms": 0.3, "p99_ms": 0.9}},
        "valkey_ping": {"back_to_back": {"requests": 2000, "p50_ms": 0.1, "p99_ms": 0.2}},
    }

    latest = report.latest({**full_run(), "floor": floor}, {"cpus": 2}, "aiohttp")

    assert latest["floor"] == floor
    assert "floor" not in report.latest(full_run(), {"cpus": 2}, "aiohttp")


def test_ratios_are_taskd_over_the_better_reference_pool_and_over_the_best_library(report: ModuleType):
    rows = {row.label: row for row in report.build_rows(full_run())}

    e2e = rows["end to end, tasks/s"]
    assert e2e.ratio("reference") == pytest.approx(2.0)
    assert e2e.ratio("best peer") == pytest.approx(1200 / 1300)
    memory = rows["memory idle, MiB (PSS, all processes)"]
    assert memory.ratio("reference") == pytest.approx(0.4)


def test_a_target_is_met_only_when_every_ratio_it_names_is_on_the_right_side(report: ModuleType):
    rows = {row.label: row for row in report.build_rows(full_run())}

    assert rows["HTTP submit (peers: enqueue), per s"].met() is True  # 12x the reference, ≥ 10x
    assert rows["HTTP submit, taskd's rate limits on, per s"].met() is False  # 4x, < 5x
    assert rows["end to end, tasks/s"].met() is False  # below the best library
    assert rows["worker draining a queue, tasks/s"].met() is False  # 1500 against 1700
    # 0.25x the reference and at most the best library's: both hold.
    assert rows["start latency p50, ms"].met() is True
    assert rows["webhook latency p50, ms"].met() is False  # 1.5 ms against Celery's 0.9
    assert rows["memory idle, MiB (PSS, all processes)"].met() is True  # 0.4x exactly
    assert rows["start latency p99, ms"].met() is None  # no target


def test_start_latency_must_beat_the_best_library_as_well_as_the_reference(report: ModuleType):
    results = full_run()
    results["peers"]["fast"]["start_latency"]["p50_ms"] = 0.8
    rows = {row.label: row for row in report.build_rows(results)}

    assert rows["start latency p50, ms"].ratio("reference") == pytest.approx(0.25)
    assert rows["start latency p50, ms"].met() is False


def test_the_table_has_a_column_per_system_the_ratios_the_targets_and_whether_each_is_met(report: ModuleType):
    table = report.render(report.build_rows(full_run())).splitlines()

    assert table[0] == (
        "| | taskd | reference, prefork | reference, threads | fast | lean "
        "| taskd ÷ reference | taskd ÷ best peer | target | met |"
    )
    assert (
        "| HTTP submit (peers: enqueue), per s | 6,000 | 500 | 500 | 3,000 | 1,500 | 12.00x | 2.00x (fast) "
        in (table[2])
    )
    assert table[2].endswith("| ≥ 10x reference | yes |")
    start = next(line for line in table if line.startswith("| start latency p50, ms |"))
    assert start.endswith("| 0.25x | 0.50x (fast) | ≤ 0.25x reference, ≤ 1x best peer | yes |")
    hook = next(line for line in table if line.startswith("| webhook latency p50, ms |"))
    assert "| 1.50 | 1.00 | 0.90 | — | — | 1.67x | — |" in hook
    assert hook.endswith("| **no** |")


def test_taskd_alone_shows_its_figures_and_no_target_judged(report: ModuleType):
    results = full_run()
    for key in ("taskd_rate_limited", "reference_api", "reference_prefork", "reference_threads"):
        del results[key]
    results["peers"] = {}

    rows = report.build_rows(results)
    table = report.render(rows).splitlines()

    assert table[0] == "| | taskd | taskd ÷ reference | taskd ÷ best peer | target | met |"
    assert "| end to end, tasks/s | 1,200 | — | — | ≥ 1x best peer | n/a |" in table
    assert all(row.met() is None for row in rows)


def test_latest_json_lists_every_target_of_the_issue_with_its_figure_and_whether_it_is_met(
    report: ModuleType,
):
    targets = report.latest(full_run(), {"cpus": 2}, "wrk")["targets"]

    assert [(target["name"], target["met"]) for target in targets] == [
        ("HTTP submit", True),  # 12x the reference
        ("HTTP submit, rate limits on", False),  # 4x, < 5x
        ("end to end through HTTP", False),  # below the best library
        ("end to end through HTTP, an API node and a worker process", True),  # 1400 against 1300
        ("start latency p50 against the reference", True),  # 0.25x
        ("start latency p50 against the peers", True),  # 0.5x the best library
        ("webhook latency p50", False),  # 1.5 ms against Celery's 0.9
        ("idle memory", True),  # 0.4x exactly
        ("Redis memory per 1,000 queued tasks", None),  # reported, no bound
        ("worker draining a queue", False),  # 1500 against 1700
        ("a second worker process", True),  # 1800 against 1500
        ("result followed on the event stream", False),  # p99 2.5x p50
    ]
    assert all(set(target) == {"name", "figure", "target", "met", "value"} for target in targets)
    json.dumps(targets, allow_nan=False)


def test_a_target_names_the_figures_it_was_judged_on(report: ModuleType):
    targets = {target["name"]: target for target in report.latest(full_run(), {"cpus": 2}, "wrk")["targets"]}

    assert targets["HTTP submit"]["figure"] == "12.00x the reference (6,000 against 500 per s)"
    assert targets["HTTP submit"]["target"] == "≥ 10x the reference"
    assert targets["end to end through HTTP"]["figure"] == "0.92x lean (1,200 against 1,300 tasks/s)"
    assert targets["Redis memory per 1,000 queued tasks"]["value"] == 1.25
    assert targets["a second worker process"]["value"] == 1.2
    assert (
        targets["result followed on the event stream"]["figure"]
        == "p50 10.00 ms, p99 25.00 ms (p99 2.50x p50)"
    )


def test_taskd_end_to_end_as_an_api_node_and_a_worker_process_is_a_row_and_a_target_of_its_own(
    report: ModuleType,
):
    rows = {row.label: row for row in report.build_rows(full_run())}
    targets = {target.name: target for target in report.goals(full_run())}

    split = rows["end to end, an API node and a worker process, tasks/s"]
    assert (split.taskd, split.ratio("reference"), split.ratio("best peer")) == (
        1400.0,
        1400 / 600,
        1400 / 1300,
    )
    assert targets["end to end through HTTP, an API node and a worker process"].figure == (
        "1.08x lean (1,400 against 1,300 tasks/s)"
    )
    # The one-process row and its target are judged on their own figure as before.
    assert targets["end to end through HTTP"].met is False


def test_a_run_without_the_api_node_and_worker_process_figure_leaves_that_target_unjudged(report: ModuleType):
    results = full_run()
    del results["taskd"]["e2e_split"]

    targets = {target.name: target for target in report.goals(results)}

    assert targets["end to end through HTTP, an API node and a worker process"].met is None


def test_a_second_worker_that_drains_no_faster_does_not_meet_its_target(report: ModuleType):
    results = full_run()
    results["taskd"]["drain_two_workers"]["tasks_per_s"] = 1500.0
    targets = {target.name: target for target in report.goals(results)}

    assert targets["a second worker process"].met is False


def test_targets_whose_figures_were_not_measured_are_not_judged(report: ModuleType):
    results = full_run()
    for key in ("taskd_rate_limited", "reference_api", "reference_prefork", "reference_threads"):
        del results[key]
    results["peers"] = {}
    del results["taskd"]["drain_two_workers"]
    del results["taskd"]["full"]["sse"]

    found = report.goals(results)

    assert all(goal.met is None for goal in found)
    assert next(goal for goal in found if goal.name == "HTTP submit").figure == (
        "taskd 6,000 per s, the reference: not measured"
    )


def test_the_targets_print_one_line_each_below_the_table(report: ModuleType):
    lines = report.render_goals(report.goals(full_run())).splitlines()

    assert len(lines) == 12
    assert (
        lines[0]
        == "- HTTP submit: 12.00x the reference (6,000 against 500 per s); target ≥ 10x the reference: met"
    )
    assert lines[1].endswith("target ≥ 5x the reference: NOT MET")
    assert lines[8].endswith("target reported (no bound): not judged")
