"""The table of bench/compare.py and its bench/results/latest.json, from the raw results of one run.

Pure functions of the results dict, so what the table says is specified by tests/test_bench_report.py.
The results hold, for the systems that ran: "taskd" ({"submit", "drain", "full"}),
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


def latest(results: dict[str, Any], machine: dict[str, Any], generator: str) -> dict[str, Any]:
    """bench/results/latest.json: the machine, the load generator and the rows of one run."""
    return {"machine": machine, "generator": generator, "rows": summary(build_rows(results))}
