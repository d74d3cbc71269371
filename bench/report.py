"""The table of bench/compare.py and its bench/results/latest.json, from the raw results of one run.

Pure functions of the results dict, so what the table says is specified by tests/test_bench_report.py.
The results hold, for the systems that ran: "taskd" ({"submit", "drain", "full", and where they ran
"queued_memory" and "drain_two_workers"}),
"taskd_rate_limited", "reference_api" (uvicorn alone), "reference_prefork" and "reference_threads"
(the service with each Celery pool), and "peers" ({name: the JSON line of bench/peers/<name>_peer.py}).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeGuard

import attrs

POOLS = ("prefork", "threads")
# The rows of latest.json, in table order.
KEYS = (
    "submit_rps",
    "submit_rps_rate_limited",
    "e2e_tasks_per_s",
    "start_p50_ms",
    "start_p99_ms",
    "webhook_p50_ms",
    "idle_memory_mib",
)


@attrs.frozen
class Target:
    """taskd ÷ the reference's better pool (or ÷ the best peer) must be at least `factor` on a row
    where higher is better, at most `factor` where lower is."""

    against: str  # "reference" or "best peer"
    factor: float


@attrs.frozen
class Row:
    label: str
    higher_is_better: bool
    taskd: float | None
    reference: dict[str, float | None]  # by Celery pool
    peers: dict[str, float | None]  # by library
    targets: tuple[Target, ...] = ()
    key: str | None = None  # its name in latest.json; None for a row of the table only
    digits: int = 0

    def _best(self, values: dict[str, float | None]) -> tuple[str, float] | None:
        known = {name: value for name, value in values.items() if _known(value)}
        if not known:
            return None
        name = (max if self.higher_is_better else min)(known, key=known.__getitem__)
        return name, known[name]

    @property
    def best_reference(self) -> float | None:
        """The reference's better pool: the higher throughput, the lower latency or memory."""
        best = self._best(self.reference)
        return None if best is None else best[1]

    @property
    def best_peer(self) -> tuple[str, float] | None:
        """The best raw library on this row, and its figure."""
        return self._best(self.peers)

    def ratio(self, against: str) -> float | None:
        """taskd ÷ the reference's better pool or ÷ the best peer; None where either is unknown."""
        if against == "reference":
            best = self.best_reference
        else:
            peer = self.best_peer
            best = None if peer is None else peer[1]
        if not _known(self.taskd) or best is None or best == 0:
            return None
        return self.taskd / best

    def target_text(self) -> str:
        sign = "≥" if self.higher_is_better else "≤"
        return ", ".join(f"{sign} {target.factor:g}x {target.against}" for target in self.targets)

    def met(self) -> bool | None:
        """Every target met; None where a figure it needs is missing (that system did not run)."""
        results = []
        for target in self.targets:
            ratio = self.ratio(target.against)
            if ratio is None:
                return None
            results.append(ratio >= target.factor if self.higher_is_better else ratio <= target.factor)
        return all(results) if results else None


def _known(value: float | None) -> TypeGuard[float]:
    return value is not None and not math.isnan(value)


def _dig(source: dict[str, Any] | None, *path: str) -> float | None:
    for part in path:
        if source is None:
            return None
        source = source.get(part)
    return source  # type: ignore[return-value]


def build_rows(results: dict[str, Any]) -> list[Row]:
    """The table's rows, from the raw results of the systems that ran."""
    taskd = results["taskd"]
    full = taskd["full"]
    peers: dict[str, dict[str, Any]] = results.get("peers", {})
    api = results.get("reference_api")
    pools = {pool: results[f"reference_{pool}"] for pool in POOLS if f"reference_{pool}" in results}

    def ref_api(*path: str) -> dict[str, float | None]:
        # One API for both pools: the submit rows run uvicorn without a worker.
        return dict.fromkeys(pools, _dig(api, *path))

    def ref(*path: str) -> dict[str, float | None]:
        return {pool: _dig(result, *path) for pool, result in pools.items()}

    def peer(*path: str) -> dict[str, float | None]:
        return {name: _dig(result, *path) for name, result in peers.items()}

    def no_peer() -> dict[str, float | None]:
        return dict.fromkeys(peers)

    return [
        Row(
            "HTTP submit (peers: enqueue), per s",
            True,
            taskd["submit"]["rps"],
            ref_api("rps"),
            peer("enqueue_per_s"),
            (Target("reference", 10),),
            "submit_rps",
        ),
        Row(
            "HTTP submit, taskd's rate limits on, per s",
            True,
            _dig(results.get("taskd_rate_limited"), "rps"),
            ref_api("rps"),
            no_peer(),
            (Target("reference", 5),),
            "submit_rps_rate_limited",
        ),
        Row("HTTP status reads, per s", True, full["status"]["rps"], ref("status", "rps"), no_peer()),
        Row(
            "end to end, tasks/s",
            True,
            full["e2e"]["tasks_per_s"],
            ref("e2e", "tasks_per_s"),
            peer("e2e_tasks_per_s"),
            (Target("best peer", 1),),
            "e2e_tasks_per_s",
        ),
        Row(
            "end to end, an API node and a worker process, tasks/s",
            True,
            _dig(taskd.get("e2e_split"), "tasks_per_s"),
            ref("e2e", "tasks_per_s"),
            peer("e2e_tasks_per_s"),
            (Target("best peer", 1),),
        ),
        Row(
            "worker draining a queue, tasks/s",
            True,
            _dig(taskd.get("drain"), "tasks_per_s"),
            {},
            peer("drain_tasks_per_s"),
            (Target("best peer", 1),),
        ),
        Row(
            "start latency p50, ms",
            False,
            full["start_latency"]["p50_ms"],
            ref("start_latency", "p50_ms"),
            peer("start_latency", "p50_ms"),
            (Target("reference", 0.25), Target("best peer", 1)),
            "start_p50_ms",
            digits=2,
        ),
        Row(
            "start latency p99, ms",
            False,
            full["start_latency"]["p99_ms"],
            ref("start_latency", "p99_ms"),
            peer("start_latency", "p99_ms"),
            key="start_p99_ms",
            digits=2,
        ),
        Row(
            "webhook latency p50, ms",
            False,
            full["webhook"]["p50_ms"],
            ref("webhook", "p50_ms"),
            no_peer(),
            (Target("reference", 1),),
            "webhook_p50_ms",
            digits=2,
        ),
        Row(
            "webhook latency p99, ms",
            False,
            full["webhook"]["p99_ms"],
            ref("webhook", "p99_ms"),
            no_peer(),
            digits=2,
        ),
        Row(
            "memory idle, MiB (PSS, all processes)",
            False,
            full["idle_memory_mb"],
            ref("idle_memory_mb"),
            peer("idle_memory_mb"),
            (Target("reference", 0.4),),
            "idle_memory_mib",
        ),
        Row(
            "memory under end-to-end load, MiB (peak)",
            False,
            full["e2e"]["peak_memory_mb"],
            ref("e2e", "peak_memory_mb"),
            no_peer(),
        ),
    ]


def _num(value: float | None, digits: int) -> str:
    return f"{value:,.{digits}f}" if _known(value) else "—"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "—"


def render(rows: list[Row]) -> str:
    """The markdown table: each system's figure, taskd ÷ the reference and ÷ the best peer, the targets."""
    pools = list(rows[0].reference) if rows else []
    peers = list(rows[0].peers) if rows else []
    header = [
        "taskd",
        *(f"reference, {pool}" for pool in pools),
        *peers,
        "taskd ÷ reference",
        "taskd ÷ best peer",
        "target",
        "met",
    ]
    lines = [
        "| | " + " | ".join(header) + " |",
        "|---|" + "---:|" * (1 + len(pools) + len(peers) + 2) + "---|---|",
    ]
    met_text: dict[bool | None, Callable[[Row], str]] = {
        True: lambda _: "yes",
        False: lambda _: "**no**",
        None: lambda row: "n/a" if row.targets else "",
    }
    for row in rows:
        best = row.best_peer
        versus_peer = _ratio(row.ratio("best peer"))
        if best is not None and versus_peer != "—":
            versus_peer += f" ({best[0]})"
        cells = [
            row.label,
            _num(row.taskd, row.digits),
            *(_num(row.reference.get(pool), row.digits) for pool in pools),
            *(_num(row.peers.get(peer), row.digits) for peer in peers),
            _ratio(row.ratio("reference")),
            versus_peer,
            row.target_text(),
            met_text[row.met()](row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_number(value: float | None) -> float | None:
    # JSON has no NaN: a figure that could not be measured is null. Two decimals are more than a
    # shared machine measures.
    return round(value, 2) if _known(value) else None


def summary(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """The "rows" of latest.json: taskd, the reference's better pool, the best peer and its name."""
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.key is None:
            continue
        best = row.best_peer
        found[row.key] = {
            "taskd": _json_number(row.taskd),
            "reference": _json_number(row.best_reference),
            "best_peer": None if best is None else _json_number(best[1]),
            "best_peer_name": None if best is None else best[0],
        }
    return {key: found[key] for key in KEYS if key in found}


@attrs.frozen
class Goal:
    """One target of issue 19, judged on one run: the figure it is judged on, and whether it holds."""

    name: str
    figure: str  # what was measured, in words and numbers
    target: str
    met: bool | None  # None: a figure it needs was not measured (that system did not run)
    value: float | None = None  # the number compared with the bound (a ratio or a figure)


def _judge(value: float | None, bound: float, higher_is_better: bool) -> bool | None:
    if not _known(value):
        return None
    return value >= bound if higher_is_better else value <= bound


def _versus(row: Row, against: str, unit: str) -> str:
    """The ratio and the two figures it comes from: "3.48x the reference (796 against 229 per s)"."""
    ratio = row.ratio(against)
    if against == "reference":
        other, name = row.best_reference, "the reference"
    else:
        best = row.best_peer
        other, name = (None, "the best peer") if best is None else (best[1], best[0])
    if ratio is None or other is None:
        return f"taskd {_num(row.taskd, row.digits)} {unit}, {name}: not measured"
    return f"{ratio:.2f}x {name} ({_num(row.taskd, row.digits)} against {_num(other, row.digits)} {unit})"


def goals(results: dict[str, Any]) -> list[Goal]:
    """Each target of issue 19 with its figure from this run and whether it is met, in the issue's order."""
    rows = {row.key or row.label: row for row in build_rows(results)}
    taskd = results["taskd"]
    submit, limited = rows["submit_rps"], rows["submit_rps_rate_limited"]
    e2e, start = rows["e2e_tasks_per_s"], rows["start_p50_ms"]
    hook, memory = rows["webhook_p50_ms"], rows["idle_memory_mib"]
    drain = rows["worker draining a queue, tasks/s"]
    split = rows["end to end, an API node and a worker process, tasks/s"]
    found = [
        Goal(
            "HTTP submit",
            _versus(submit, "reference", "per s"),
            "≥ 10x the reference",
            _judge(submit.ratio("reference"), 10, True),
            submit.ratio("reference"),
        ),
        Goal(
            "HTTP submit, rate limits on",
            _versus(limited, "reference", "per s"),
            "≥ 5x the reference",
            _judge(limited.ratio("reference"), 5, True),
            limited.ratio("reference"),
        ),
        Goal(
            "end to end through HTTP",
            _versus(e2e, "best peer", "tasks/s"),
            "≥ 1x the best peer's end to end (no HTTP)",
            _judge(e2e.ratio("best peer"), 1, True),
            e2e.ratio("best peer"),
        ),
        Goal(
            "end to end through HTTP, an API node and a worker process",
            _versus(split, "best peer", "tasks/s"),
            "≥ 1x the best peer's end to end (no HTTP)",
            _judge(split.ratio("best peer"), 1, True),
            split.ratio("best peer"),
        ),
        Goal(
            "start latency p50 against the reference",
            _versus(start, "reference", "ms"),
            "≤ 0.25x the reference",
            _judge(start.ratio("reference"), 0.25, False),
            start.ratio("reference"),
        ),
        Goal(
            "start latency p50 against the peers",
            _versus(start, "best peer", "ms"),
            "≤ 1x the best peer",
            _judge(start.ratio("best peer"), 1, False),
            start.ratio("best peer"),
        ),
        Goal(
            "webhook latency p50",
            _versus(hook, "reference", "ms"),
            "≤ 1x the reference",
            _judge(hook.ratio("reference"), 1, False),
            hook.ratio("reference"),
        ),
        Goal(
            "idle memory",
            _versus(memory, "reference", "MiB"),
            "≤ 0.4x the reference",
            _judge(memory.ratio("reference"), 0.4, False),
            memory.ratio("reference"),
        ),
    ]
    queued = _dig(taskd.get("queued_memory"), "mib_per_1000")
    found.append(
        Goal(
            "Redis memory per 1,000 queued tasks",
            f"{_num(queued, 2)} MiB (INFO memory used_memory, before and after queueing "
            f"{_num(_dig(taskd.get('queued_memory'), 'tasks'), 0)} tasks with no worker)",
            "reported (no bound)",
            None,
            queued,
        )
    )
    found.append(
        Goal(
            "worker draining a queue",
            _versus(drain, "best peer", "tasks/s"),
            "≥ 1x the best peer",
            _judge(drain.ratio("best peer"), 1, True),
            drain.ratio("best peer"),
        )
    )
    one = _dig(taskd.get("drain"), "tasks_per_s")
    two = _dig(taskd.get("drain_two_workers"), "tasks_per_s")
    gain = two / one if _known(one) and _known(two) and one else None
    found.append(
        Goal(
            "a second worker process",
            f"two workers drain {_num(two, 0)} tasks/s, one {_num(one, 0)}"
            + ("" if gain is None else f" ({gain:.2f}x)"),
            "> 1x one worker's drain rate",
            None if gain is None else gain > 1,
            gain,
        )
    )
    sse = taskd["full"].get("sse")
    p50, p99 = _dig(sse, "p50_ms"), _dig(sse, "p99_ms")
    spread = p99 / p50 if _known(p50) and _known(p99) and p50 else None
    found.append(
        Goal(
            "result followed on the event stream",
            f"p50 {_num(p50, 2)} ms, p99 {_num(p99, 2)} ms"
            + ("" if spread is None else f" (p99 {spread:.2f}x p50)"),
            "p99 ≤ 2x p50",
            _judge(spread, 2, False),
            spread,
        )
    )
    return found


def render_goals(found: list[Goal]) -> str:
    """The lines printed below the table: each target, its figure, met or not."""
    word = {True: "met", False: "NOT MET", None: "not judged"}
    return "\n".join(
        f"- {goal.name}: {goal.figure}; target {goal.target}: {word[goal.met]}" for goal in found
    )


def latest(results: dict[str, Any], machine: dict[str, Any], generator: str) -> dict[str, Any]:
    """bench/results/latest.json: the machine, its floor where measured (bench/floor.py), the load
    generator, the rows of one run and the targets."""
    return {
        "machine": machine,
        **({"floor": results["floor"]} if "floor" in results else {}),
        "generator": generator,
        "rows": summary(build_rows(results)),
        "targets": [
            {
                "name": goal.name,
                "figure": goal.figure,
                "target": goal.target,
                "met": goal.met,
                "value": _json_number(goal.value),
            }
            for goal in goals(results)
        ],
    }
