"""Hosts whose settings disagree, as during a deploy or by an operator's mistake
(docs/production.md#settings-that-differ-between-hosts): what a task, a caller and an operator see.

Each Service here is a host of its own on the test's Valkey: its own data dir, host id and settings.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import attrs
from conftest import RunningService
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis_probes import idle_worker
from webhook_receiver import Received

from taskd.agreement import Agreement, Published, digests
from taskd.config import (
    Config,
    LimitsConfig,
    MediaConfig,
    MetricsConfig,
    NetworkConfig,
    QueueConfig,
    StorageConfig,
    TasksConfig,
    WebhooksConfig,
    WorkerConfig,
)

FAST_BEATS = WorkerConfig(heartbeat_interval=0.5, heartbeat_ttl=3, poll_delay=0.5)
# The secrets every host must share; each host's data dir would otherwise make its own.
SHARED = {
    "webhooks": WebhooksConfig(secret="whsec_bWlzbWF0Y2gtc2hhcmVkLXNlY3JldC0wMTIz"),
    "media": MediaConfig(secret="mismatch-media-secret-0123456789"),
}


async def start_api(start_service: Any, tmp_path: Path, **settings: Any) -> RunningService:
    """An API node (`taskd serve --no-worker`) with its own data dir."""
    return await start_service(workers=False, data_dir=str(tmp_path / "api"), **(SHARED | settings))


async def start_host(start_service: Any, tmp_path: Path, host: str, **settings: Any) -> RunningService:
    """A worker host (no HTTP) with its own data dir and host id."""
    worker = attrs.evolve(FAST_BEATS, host_id=host)
    return await start_service(
        http=False, data_dir=str(tmp_path / host), worker=worker, **(SHARED | settings)
    )


async def run_a_task_handed_on(
    start_service: Any, tmp_path: Path, caplog: Any, settings: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """A `noop` (with the submit's `fields`) that a host without the type takes first and hands on to
    one that has it, every host with `settings` too; its status once it ended. Its hand-ons are
    logged at INFO by taskd.engine."""
    caplog.set_level(logging.INFO, logger="taskd.engine")
    settings = settings or {}
    api = await start_api(start_service, tmp_path, **settings)
    # The host that has the type runs one task of `default` at a time and is kept busy, so the
    # host without it (started after, so that the other's heartbeat is there) takes the next one.
    queues = Config().queues | {"default": QueueConfig(concurrency=1, timeout=120)}
    await start_host(start_service, tmp_path, "new-host", queues=queues, **settings)
    busy = await api.submit("sleep", {"seconds": 3})
    await api.wait_for(busy["task_id"], lambda body: body["status"] == "processing")
    await start_host(start_service, tmp_path, "old-host", tasks=TasksConfig(modules=[]), **settings)

    task = await api.submit("noop", {}, **fields)
    body: dict[str, Any] = await api.wait_terminal(task["task_id"], timeout=60)
    return body


async def test_a_task_taken_by_a_worker_without_its_type_runs_on_a_worker_that_has_it(
    start_service, tmp_path, caplog
):
    body = await run_a_task_handed_on(start_service, tmp_path, caplog)

    assert body["status"] == "completed", body["error"]
    handed_on = [r.getMessage() for r in caplog.records if "handed on" in r.getMessage()]
    assert handed_on and "on host old-host" in handed_on[0]


async def test_a_task_handed_on_runs_as_its_first_attempt(start_service, tmp_path, caplog):
    body = await run_a_task_handed_on(start_service, tmp_path, caplog)

    # No handler ran where it was handed on: it keeps every retry it has (retry.max_retries).
    assert any("handed on" in r.getMessage() for r in caplog.records)
    assert (body["attempt"], body["result"]["attempt"]) == (1, 1)


async def test_each_take_of_a_task_handed_on_sends_a_started_webhook_of_its_own_id(
    start_service, tmp_path, caplog, receiver
):
    webhooks = attrs.evolve(SHARED["webhooks"], allow_private=True)
    body = await run_a_task_handed_on(
        start_service,
        tmp_path,
        caplog,
        {"webhooks": webhooks},
        callback_url=receiver.url(),
        webhook_events=["started", "completed"],
    )

    def started() -> list[Received]:
        return [r for r in receiver.received if r.json["event"] == "started"]

    async with asyncio.timeout(30):  # the run's own start, which may come after its end
        while body["started_at"] not in [r.json["started_at"] for r in started()]:
            await receiver.wait_for(len(receiver.received) + 1)

    # Each hand-on's take and the run: all attempt 1. Before, all had the id msg_<id>_started_1, and
    # a receiver that drops repeated ids kept the first take's start and dropped the run's.
    assert len(started()) >= 2 and {r.json["attempt"] for r in started()} == {1}
    assert len({r.headers["webhook-id"] for r in started()}) == len(started())


async def test_a_task_handed_on_is_taken_again_no_sooner_than_its_back_off(start_service, tmp_path, caplog):
    await run_a_task_handed_on(start_service, tmp_path, caplog)

    # Back-offs of 0.5, 1, 2, 4 … s while the host with the type is busy for 3 s (a few more on a
    # slow machine); due at once, it was taken thousands of times.
    assert len([r for r in caplog.records if "handed on" in r.getMessage()]) <= 8


async def test_a_task_handed_on_is_run_at_once_by_an_idle_worker_that_has_its_type(
    start_service, tmp_path, caplog, redis: Redis
):
    caplog.set_level(logging.INFO, logger="taskd.engine")
    api = await start_api(start_service, tmp_path)
    # Idle longest, the host without the type is the one a submit wakes: waited for in the idle set
    # before the other starts (a start returns before its worker's first take; the other's could
    # come first, and that host was woken and ran the task itself).
    await idle_worker(
        redis, await start_host(start_service, tmp_path, "old-host", tasks=TasksConfig(modules=[]))
    )
    # The host with the type looks for due jobs only once a minute unless woken; idle too before the
    # submit, or its first take could find the task.
    worker = attrs.evolve(FAST_BEATS, host_id="new-host", poll_delay=60)
    await idle_worker(
        redis, await start_service(http=False, data_dir=str(tmp_path / "new-host"), worker=worker, **SHARED)
    )

    task = await api.submit("noop", {})
    body = await api.wait_terminal(task["task_id"], timeout=30)

    assert body["status"] == "completed", body["error"]
    assert any("handed on" in r.getMessage() for r in caplog.records)


async def test_a_task_no_live_worker_has_the_type_of_fails_naming_the_host(start_service, tmp_path):
    api = await start_api(start_service, tmp_path)
    await start_host(start_service, tmp_path, "old-host", tasks=TasksConfig(modules=[]))

    task = await api.submit("noop", {})
    body = await api.wait_terminal(task["task_id"])

    assert body["status"] == "failed"
    assert body["error"] == (
        "No handler is installed for task type 'noop' on worker host old-host, "
        "nor on any other live worker of queue default"
    )


async def test_queue_health_says_which_queue_with_waiting_tasks_no_live_worker_serves(
    start_service, tmp_path
):
    api = await start_api(start_service, tmp_path)
    await start_host(start_service, tmp_path, "cpu-host", serve_queues=["cpu_intensive"])
    await api.submit("noop", {})  # a task of queue default

    async with api.client.get("/api/v1/tasks/health") as response:
        health = await response.json()

    assert health["status"] == "critical"
    assert {
        "severity": "critical",
        "message": "Queue default has 1 task waiting and no live worker serves it",
        "metric": "queue_without_worker",
        "value": 1,
        "queue": "default",
    } in health["alerts"]


async def test_a_process_whose_limits_differ_from_another_s_says_so_at_start(start_service, tmp_path, caplog):
    await start_api(start_service, tmp_path)

    await start_host(start_service, tmp_path, "host-b", limits=LimitsConfig(submit_per_minute=5))

    warnings = [r.getMessage() for r in caplog.records if r.name == "taskd.settings"]
    assert any(
        message.startswith("settings differ from those of the taskd api on host ")
        and message.endswith(
            ": limits.submit_per_minute; every process must agree on them "
            "(docs/production.md, Settings that differ between hosts)"
        )
        for message in warnings
    ), warnings


async def test_queue_health_names_a_setting_live_processes_do_not_agree_on(start_service, tmp_path):
    api = await start_api(start_service, tmp_path)
    await start_host(start_service, tmp_path, "host-b", storage=StorageConfig(task_ttl=600))

    async with api.client.get("/api/v1/tasks/health") as response:
        health = await response.json()

    (alert,) = [alert for alert in health["alerts"] if alert["metric"] == "settings_mismatch"]
    assert (alert["severity"], alert["setting"], alert["value"]) == ("warning", "storage.task_ttl", 2)
    assert alert["message"].startswith("Setting storage.task_ttl differs between taskd processes: ")
    assert "worker on host host-b" in alert["message"]


async def test_metrics_mark_a_setting_live_processes_do_not_agree_on(start_service, tmp_path):
    api = await start_api(start_service, tmp_path)
    await start_host(start_service, tmp_path, "host-b", storage=StorageConfig(task_ttl=600))

    async with api.client.get("/metrics") as response:
        text = await response.text()

    mismatch = {
        sample.labels["setting"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "taskd_settings_mismatch"
        for sample in family.samples
    }
    assert (mismatch["storage.task_ttl"], mismatch["limits.submit_per_minute"]) == (1, 0)


async def test_processes_that_agree_raise_no_settings_alert_nor_warning(start_service, tmp_path, caplog):
    api = await start_api(start_service, tmp_path)
    await start_host(start_service, tmp_path, "host-b")

    async with api.client.get("/api/v1/tasks/health") as response:
        health = await response.json()

    assert [alert for alert in health["alerts"] if alert["metric"] == "settings_mismatch"] == []
    assert [r.getMessage() for r in caplog.records if r.name == "taskd.settings"] == []


async def test_a_setting_that_is_per_process_by_design_is_not_said_to_differ(start_service, tmp_path, caplog):
    api = await start_api(start_service, tmp_path)
    # Each process caps its own open streams (docs/production.md's table): a larger host has more.
    await start_host(start_service, tmp_path, "host-b", limits=LimitsConfig(open_streams=500))

    async with api.client.get("/api/v1/tasks/health") as response:
        health = await response.json()

    assert [alert for alert in health["alerts"] if alert["metric"] == "settings_mismatch"] == []
    assert [r.getMessage() for r in caplog.records if r.name == "taskd.settings"] == []


@attrs.frozen
class NewerLimits(LimitsConfig):
    """The limits of a later taskd version, which knows one more (at its default)."""

    max_widgets: int = 10


async def test_a_process_of_a_version_with_one_more_limit_is_not_said_to_differ(
    start_service, tmp_path, caplog
):
    api = await start_api(start_service, tmp_path)
    # A rolling upgrade: the same settings, and the new version has a limit the old one lacks.
    await start_host(start_service, tmp_path, "host-b", limits=NewerLimits())

    async with api.client.get("/api/v1/tasks/health") as response:
        health = await response.json()

    assert [alert for alert in health["alerts"] if alert["metric"] == "settings_mismatch"] == []
    assert [r.getMessage() for r in caplog.records if r.name == "taskd.settings"] == []


async def test_a_worker_whose_media_links_start_elsewhere_than_the_api_s_says_so(
    start_service, tmp_path, caplog
):
    # The API node is reached at media.example; the worker host, left without media.base_url,
    # would start its links with its own address, where no API listens.
    media = MediaConfig(secret=SHARED["media"].secret, base_url="https://media.example")
    await start_service(
        workers=False, data_dir=str(tmp_path / "api"), webhooks=SHARED["webhooks"], media=media
    )

    await start_host(start_service, tmp_path, "host-b")

    warnings = [r.getMessage() for r in caplog.records if r.name == "taskd.settings"]
    assert any(": media.base_url; every process must agree" in message for message in warnings), warnings


async def test_an_api_node_whose_outbound_guard_differs_from_another_s_says_so(
    start_service, tmp_path, caplog
):
    # Each API node checks a submit's callback_url with its own [network] rules, and every process
    # sends webhooks with its own: one node refused what another took, and nothing said why.
    await start_api(start_service, tmp_path)

    await start_service(
        workers=False,
        data_dir=str(tmp_path / "api-b"),
        network=NetworkConfig(allow_networks=["10.20.0.0/16"]),
        **SHARED,
    )

    warnings = [r.getMessage() for r in caplog.records if r.name == "taskd.settings"]
    assert any(": network; every process must agree" in message for message in warnings), warnings


async def test_api_nodes_that_allow_every_address_agree_whatever_networks_they_list(
    start_service, tmp_path, caplog
):
    # With allow_private the guard never reads allow_networks: both nodes take the same callback
    # URLs, and a warning (and a settings_mismatch alert) would send the operator after nothing.
    await start_service(
        workers=False, data_dir=str(tmp_path / "api"), network=NetworkConfig(allow_private=True), **SHARED
    )

    await start_service(
        workers=False,
        data_dir=str(tmp_path / "api-b"),
        network=NetworkConfig(allow_private=True, allow_networks=["10.20.0.0/16"]),
        **SHARED,
    )

    assert [r.getMessage() for r in caplog.records if r.name == "taskd.settings"] == []


async def test_a_host_whose_media_retention_differs_from_another_s_says_so(start_service, tmp_path, caplog):
    # Every process sweeps the one media store with its own retention: the shortest deletes the
    # files every other keeps (and the links they signed for a week answer 404 after an hour).
    await start_api(start_service, tmp_path)

    await start_host(start_service, tmp_path, "host-b", media=attrs.evolve(SHARED["media"], retention=3600))

    warnings = [r.getMessage() for r in caplog.records if r.name == "taskd.settings"]
    assert any(": media.retention; every process must agree" in message for message in warnings), warnings


async def test_a_host_whose_media_link_lifetime_differs_from_another_s_says_so(
    start_service, tmp_path, caplog
):
    # A link's expiry is set by whoever signs it: a status read through one node gave a week, the
    # same read through the other an hour.
    await start_api(start_service, tmp_path)

    await start_host(start_service, tmp_path, "host-b", media=attrs.evolve(SHARED["media"], url_ttl=3600))

    warnings = [r.getMessage() for r in caplog.records if r.name == "taskd.settings"]
    assert any(": media.url_ttl; every process must agree" in message for message in warnings), warnings


async def test_an_api_node_that_serves_metrics_without_a_key_while_another_asks_for_one_says_so(
    start_service, tmp_path, caplog
):
    # Behind a load balancer, /metrics asked the key on one node and showed every figure to anyone
    # on the other.
    await start_api(start_service, tmp_path)

    await start_service(
        workers=False, data_dir=str(tmp_path / "api-b"), metrics=MetricsConfig(require_key=True), **SHARED
    )

    warnings = [r.getMessage() for r in caplog.records if r.name == "taskd.settings"]
    assert any(": metrics.require_key; every process must agree" in message for message in warnings), warnings


async def test_a_process_reads_the_settings_of_another_once_not_at_every_publish(redis: Redis):
    # Every process publishes every heartbeat interval; a process's settings never change while it
    # lives, so the N processes need not read the N records (about 1.2 KB each) every time.
    def process(pid: int) -> Agreement:
        published = digests(
            Config(), api_keys=[], webhook_secret="", media_secret=b"s" * 64, media_base_url=""
        )
        return Agreement(redis, Published(f"process-{pid}", "host", pid, ["worker"], published), ttl=60)

    first, second = process(1), process(2)
    await first.publish()
    await second.publish()
    await redis.config_resetstat()

    for _ in range(3):
        await second.publish()

    stats = await redis.info("commandstats")
    assert stats.get("cmdstat_mget", {}).get("calls", 0) == 0
