"""The document's alert thresholds, at their edges."""

from __future__ import annotations

import pytest

from taskd.alerts import overall_status, queue_alerts
from taskd.heartbeat import WorkerInfo
from taskd.model import Metrics

GB = 1024**3


def metrics(failed: int, total: int = 100) -> Metrics:
    return Metrics(total_tasks=total, completed_tasks=total - failed, failed_tasks=failed)


def worker(rss: int) -> WorkerInfo:
    return WorkerInfo("w1", "host", 1, ["default"], 0.0, rss_bytes=rss)


@pytest.mark.parametrize(
    ("failed", "expected"), [(10, "healthy"), (11, "warning"), (20, "warning"), (21, "critical")]
)
def test_failure_rate_thresholds(failed, expected):
    assert overall_status(queue_alerts(metrics(failed), {}, [], 0)) == expected


@pytest.mark.parametrize(
    ("failed", "total", "expected"),
    [(200, 2000, "healthy"), (201, 2001, "warning"), (400, 2000, "warning"), (401, 2001, "critical")],
)
def test_failure_rate_thresholds_hold_past_the_metrics_rounding(failed, total, expected):
    # 201 of 2,001 is 10.045 %, and 401 of 2,001 is 20.04 %: both above their threshold, while the
    # metrics body's one-decimal rates say 10.0 and 20.0.
    assert overall_status(queue_alerts(metrics(failed, total), {}, [], 0)) == expected


def test_a_failure_rate_alert_says_the_rate_to_two_decimals():
    (alert,) = queue_alerts(metrics(201, 2001), {}, [], 0)

    assert (alert.message, alert.value) == ("Elevated failure rate: 10.04%", 10.04)


@pytest.mark.parametrize(
    ("seconds", "expected"), [(480, "healthy"), (481, "warning"), (570, "warning"), (571, "critical")]
)
def test_task_duration_thresholds(seconds, expected):
    alerts = queue_alerts(metrics(0), {"t1": 1000.0}, [], 1000.0 + seconds)

    assert overall_status(alerts) == expected


@pytest.mark.parametrize(
    ("rss", "expected"),
    [
        (int(1.5 * GB), "healthy"),
        (int(1.5 * GB) + 1, "warning"),
        (int(1.9 * GB), "warning"),
        (int(1.9 * GB) + 1, "critical"),
    ],
)
def test_worker_memory_thresholds(rss, expected):
    alerts = queue_alerts(metrics(0), {}, [worker(rss)], 0)

    assert overall_status(alerts) == expected


def test_memory_alert_names_the_worker_and_megabytes():
    (alert,) = queue_alerts(metrics(0), {}, [worker(2 * GB)], 0)

    assert alert.to_json() == {
        "severity": "critical",
        "message": "Worker w1 using 2048.0 MB of memory",
        "metric": "memory_usage",
        "value": 2048.0,
        "worker_id": "w1",
    }


def test_no_tasks_is_healthy():
    assert queue_alerts(Metrics(), {}, [], 0) == []


def test_waiting_tasks_of_a_queue_no_live_worker_serves_raise_a_critical_alert():
    (alert,) = queue_alerts(Metrics(), {}, [worker(0)], 0, waiting={"default": 0, "gpu_heavy": 3})

    assert alert.to_json() == {
        "severity": "critical",
        "message": "Queue gpu_heavy has 3 tasks waiting and no live worker serves it",
        "metric": "queue_without_worker",
        "value": 3,
        "queue": "gpu_heavy",
    }


def test_waiting_tasks_of_a_queue_a_live_worker_serves_raise_no_alert():
    assert queue_alerts(Metrics(), {}, [worker(0)], 0, waiting={"default": 5}) == []
