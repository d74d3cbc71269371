"""deploy/grafana/taskd.json: every metric its queries use is in a real `/metrics` answer, and it has
the panels operators look for."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from taskd.gpu.devices import SimulatedBackend

BOARD = json.loads((Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "taskd.json").read_text())
METRIC = re.compile(r"\b(?:taskd|process)_[a-z_]+\b")


def expressions() -> list[str]:
    return [target["expr"] for panel in BOARD["panels"] for target in panel["targets"]]


async def test_every_metric_the_dashboard_queries_is_in_a_real_scrape(start_service):
    service = await start_service(gpu_backend=SimulatedBackend(1))
    task = await service.submit("noop", {})
    await service.wait_terminal(task["task_id"])
    async with aiohttp.ClientSession() as session, session.get(f"{service.base_url}/metrics") as response:
        text = await response.text()
    scraped = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}

    used = {name for expr in expressions() for name in METRIC.findall(expr)}

    assert used - scraped == set()
    assert len(used) >= 15


def test_the_dashboard_shows_throughput_waits_run_times_failures_gpu_slots_and_webhooks():
    queried = " ".join(expressions())

    for metric in (
        "taskd_tasks_completed_total",
        "taskd_task_wait_seconds_bucket",
        "taskd_task_duration_seconds_bucket",
        "taskd_tasks_failed_total",
        "taskd_gpu_slots_used",
        "taskd_webhooks_due",
    ):
        assert metric in queried, metric


def test_every_panel_queries_the_datasource_chosen_on_the_board():
    variables = {variable["name"]: variable for variable in BOARD["templating"]["list"]}

    assert variables["datasource"]["query"] == "prometheus"
    for panel in BOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])
