"""Rate limits with real servers: per-key counts per sliding minute in Redis shared by every process,
waiting tasks per project, queue length, and the IETF RateLimit fields. The concurrency throttle
per project (which refuses nothing) is tested with running workers in test_fair_scheduling.py."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import textwrap
import time

import aiohttp
import pytest
from conftest import API_KEY
from examples import TASK_DATA
from redis_probes import project_quiet, sent_to_valkey

from taskd import keys
from taskd.config import AuthConfig, LimitsConfig, ScopedKey, load_config
from taskd.http.ratelimit import key_id
from taskd.store import records

OTHER_KEY = "other-key-9876543210"
SUBMIT_INTERVAL = 60 / 100  # seconds between refills of the default submit quota
NO_PROJECT_LIMIT = LimitsConfig(concurrent_per_project=0)


def submit_body(project_id: str = "rl") -> dict:
    return {"project_id": project_id, "task_type": "generate_video", "task_data": TASK_DATA["generate_video"]}


async def post_submit(base_url: str, key: str, project_id: str = "rl") -> aiohttp.ClientResponse:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url}/api/v1/tasks/submit", json=submit_body(project_id), headers={"X-API-Key": key}
        ) as response,
    ):
        await response.read()
        return response


async def burst(base_urls: list[str], key: str, count: int) -> tuple[list[int], float]:
    """`count` submissions as fast as possible, spread over `base_urls`; statuses in order, and seconds taken."""
    started = time.monotonic()
    statuses = []
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            url = base_urls[i % len(base_urls)]
            async with session.post(
                f"{url}/api/v1/tasks/submit", json=submit_body(), headers={"X-API-Key": key}
            ) as response:
                statuses.append(response.status)
    return statuses, time.monotonic() - started


def allowed_after(elapsed: float) -> int:
    """An upper bound: never more than 100 in a minute (a looser bound, one more every 0.6 s, was the
    old GCRA's, which this test also held for)."""
    return 100 + math.ceil(elapsed / SUBMIT_INTERVAL)


async def test_the_limit_plus_first_submission_in_a_minute_is_refused_however_the_first_were_spread(
    start_service,
):
    # 20 per minute, spread over 4 s: a token bucket (GCRA) would have refilled one by then.
    taskd = await start_service(
        workers=False, limits=LimitsConfig(submit_per_minute=20, concurrent_per_project=0)
    )
    statuses = []
    for _ in range(20):
        statuses.append((await post_submit(taskd.base_url, API_KEY)).status)
        await asyncio.sleep(0.2)

    refused = await post_submit(taskd.base_url, API_KEY)

    assert statuses == [200] * 20
    assert refused.status == 429
    # The oldest of the 20 leaves the window about 56 s from now: that is the wait it announces.
    assert 50 <= int(refused.headers["Retry-After"]) <= 60


async def test_the_101st_submission_in_a_burst_is_refused_while_another_key_is_unaffected(start_service):
    taskd = await start_service(
        workers=False, auth=AuthConfig(api_keys=[API_KEY, OTHER_KEY]), limits=NO_PROJECT_LIMIT
    )

    statuses, elapsed = await burst([taskd.base_url], API_KEY, 110)
    other = await post_submit(taskd.base_url, OTHER_KEY)

    accepted = statuses.count(200)
    assert 100 <= accepted <= allowed_after(elapsed)
    assert statuses[:100] == [200] * 100
    assert 429 in statuses
    assert other.status == 200


async def test_a_refused_submission_has_retry_after_and_the_documented_body(start_service):
    taskd = await start_service(
        workers=False, limits=LimitsConfig(submit_per_minute=2, concurrent_per_project=0)
    )
    for _ in range(2):
        await taskd.submit("generate_video", TASK_DATA["generate_video"])

    async with taskd.client.post("/api/v1/tasks/submit", json=submit_body()) as response:
        body = await response.json()

    assert response.status == 429
    assert body["error"] == "rate_limited"
    assert "2 per minute" in body["message"]
    assert body["retry_after"] == int(response.headers["Retry-After"])
    assert 1 <= body["retry_after"] <= 60  # until the oldest of the two is a minute old
    assert response.headers["RateLimit"].startswith('"submit";r=0;')


async def test_two_taskd_processes_share_one_quota_per_key(start_service):
    first = await start_service(workers=False, limits=NO_PROJECT_LIMIT)
    second = await start_service(workers=False, limits=NO_PROJECT_LIMIT)

    statuses, elapsed = await burst([first.base_url, second.base_url], API_KEY, 110)

    assert 100 <= statuses.count(200) <= allowed_after(elapsed)
    assert 429 in statuses[100:]


# It waits out a Retry-After of up to a minute: started first, beside the rest of the suite.
@pytest.mark.long
async def test_a_refused_key_gets_through_again_after_retry_after(start_service):
    taskd = await start_service(
        workers=False, limits=LimitsConfig(submit_per_minute=60, concurrent_per_project=0)
    )
    statuses, _ = await burst([taskd.base_url], API_KEY, 61)
    refused = await post_submit(taskd.base_url, API_KEY)
    assert 429 in [*statuses, refused.status]

    await asyncio.sleep(int(refused.headers.get("Retry-After", "1")))
    again = await post_submit(taskd.base_url, API_KEY)

    assert again.status == 200


async def test_status_checks_have_their_own_quota(start_service):
    taskd = await start_service(workers=False, limits=LimitsConfig(submit_per_minute=1, status_per_minute=3))
    task = await taskd.submit("generate_video", TASK_DATA["generate_video"])

    codes = []
    for _ in range(4):
        async with taskd.client.get(f"/api/v1/tasks/{task['task_id']}/status") as response:
            codes.append(response.status)

    assert codes == [200, 200, 200, 429]


async def test_rate_limited_responses_carry_the_ietf_ratelimit_fields(start_service):
    taskd = await start_service(workers=False)
    task = await taskd.submit("generate_video", TASK_DATA["generate_video"])

    async with taskd.client.get(f"/api/v1/tasks/{task['task_id']}/status") as status:
        pass
    async with taskd.client.get("/api/v1/tasks/nope/status") as missing:
        pass
    async with taskd.client.post("/api/v1/tasks/submit", json={}) as invalid:
        pass

    assert status.headers["RateLimit-Policy"] == '"status";q=1000;w=60'
    assert status.headers["RateLimit"].startswith('"status";r=999;t=')
    assert missing.status == 404 and missing.headers["RateLimit"].startswith('"status";r=998;')
    assert invalid.status == 400 and invalid.headers["RateLimit-Policy"] == '"submit";q=100;w=60'
    assert invalid.headers["RateLimit"].startswith('"submit";r=98;')


async def test_a_head_of_a_task_status_spends_the_status_quota(start_service):
    taskd = await start_service(workers=False, limits=LimitsConfig(status_per_minute=2))
    task = await taskd.submit("generate_video", TASK_DATA["generate_video"])

    answers = []
    for _ in range(3):
        async with taskd.client.head(f"/api/v1/tasks/{task['task_id']}/status") as response:
            answers.append((response.status, response.headers.get("RateLimit", "")))

    assert [status for status, _ in answers] == [200, 200, 429]
    assert answers[0][1].startswith('"status";r=1;')


async def test_requests_refused_for_another_project_spend_a_scoped_keys_quota(start_service):
    scoped = {"X-API-Key": "key-of-project-own-only-4c1b9e"}
    taskd = await start_service(
        workers=False,
        auth=AuthConfig(api_keys=[API_KEY], keys=[ScopedKey(scoped["X-API-Key"], ["own"])]),
        limits=LimitsConfig(submit_per_minute=4, status_per_minute=1, concurrent_per_project=0),
    )
    theirs = (await taskd.submit("noop", {}, project_id="theirs"))["task_id"]
    answers = {}

    for name, method, path, body in (
        ("status", "GET", f"/api/v1/tasks/{theirs}/status", None),
        ("status again", "GET", f"/api/v1/tasks/{theirs}/status", None),
        ("submit", "POST", "/api/v1/tasks/submit", submit_body("theirs")),
        ("retry", "POST", f"/api/v1/tasks/{theirs}/retry", None),
        ("batch", "POST", "/api/v1/tasks/batch", {"tasks": [submit_body("own"), submit_body("theirs")]}),
        ("own submit", "POST", "/api/v1/tasks/submit", submit_body("own")),
    ):
        async with taskd.client.request(method, path, json=body, headers=scoped) as response:
            answers[name] = (response.status, response.headers.get("RateLimit", "").split(";t=")[0])

    assert answers == {
        "status": (404, '"status";r=0'),
        "status again": (429, '"status";r=0'),
        "submit": (400, '"submit";r=3'),
        "retry": (404, '"submit";r=2'),
        "batch": (400, '"submit";r=0'),
        "own submit": (429, '"submit";r=0'),
    }


async def test_routes_without_a_limit_carry_no_ratelimit_fields(start_service):
    taskd = await start_service(workers=False)

    async with taskd.client.get("/api/v1/health") as response:
        pass

    assert "RateLimit" not in response.headers


async def test_a_zero_limit_means_unlimited(start_service):
    taskd = await start_service(
        workers=False, limits=LimitsConfig(submit_per_minute=0, concurrent_per_project=0)
    )

    statuses, _ = await burst([taskd.base_url], API_KEY, 120)

    assert set(statuses) == {200}


async def test_redis_holds_a_hash_of_the_key_never_the_key(start_service, redis):
    taskd = await start_service(workers=False)
    await taskd.submit("generate_video", TASK_DATA["generate_video"])

    names = [name.decode() for name in await redis.keys(keys.rate_limit("*", "")[:-1])]

    assert names == [keys.rate_limit("submit", key_id(API_KEY))]
    assert API_KEY not in names[0]


async def test_the_51st_task_of_a_project_is_accepted_and_waits(start_service):
    # Issue 16: "Concurrent tasks: 50 per project" throttles how many run; it refuses nothing.
    taskd = await start_service(workers=False)
    for _ in range(50):
        await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="busy")

    fifty_first = await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="busy")

    assert fifty_first["status"] == "queued"
    assert fifty_first["queue_position"] == 51


async def test_a_project_with_its_waiting_cap_of_tasks_queued_is_refused_with_the_documented_body(
    start_service,
):
    taskd = await start_service(workers=False, limits=LimitsConfig(queued_per_project=3))
    for _ in range(3):
        await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="busy")

    async with taskd.client.post("/api/v1/tasks/submit", json=submit_body("busy")) as refused:
        body = await refused.json()
    other_project = await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="calm")

    assert refused.status == 429
    assert body["error"] == "rate_limited"
    assert "3 tasks waiting" in body["message"] and "at most 3 may wait" in body["message"]
    assert int(refused.headers["Retry-After"]) == body["retry_after"]
    assert other_project["status"] == "queued"


async def test_a_cancelled_waiting_task_frees_its_place_under_the_waiting_cap(start_service):
    taskd = await start_service(workers=False, limits=LimitsConfig(queued_per_project=2))
    first = await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="p")
    await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="p")
    async with taskd.client.post("/api/v1/tasks/submit", json=submit_body("p")) as full:
        assert full.status == 429

    async with taskd.client.delete(f"/api/v1/tasks/{first['task_id']}") as cancelled:
        assert cancelled.status == 200
    third = await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="p")

    assert third["status"] == "queued"


async def test_a_place_held_by_a_task_whose_record_is_gone_is_given_back_at_the_waiting_cap(
    start_service, redis
):
    taskd = await start_service(workers=False, limits=LimitsConfig(queued_per_project=2))
    gone = await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="p")
    await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="p")
    await redis.delete(keys.task(gone["task_id"]))  # expired while it waited

    third = await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="p")

    assert third["status"] == "queued"


async def test_submits_refused_at_the_waiting_cap_read_the_projects_records_once_a_minute(
    start_service, redis
):
    # A client retrying its 429s must not make Valkey read every waiting record of the project per
    # try: at the default cap of 10,000 that was ~23 ms of Valkey's one thread each.
    taskd = await start_service(workers=False, limits=LimitsConfig(queued_per_project=3))
    for _ in range(3):
        await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="p")

    async def refused_submits(count: int) -> None:
        for _ in range(count):
            async with taskd.client.post("/api/v1/tasks/submit", json=submit_body("p")) as refused:
                assert refused.status == 429

    def record_reads(ran: list[str]) -> int:
        return sum(1 for command in ran if command.startswith(f"HGET {keys.task('')}"))

    first_minute = await sent_to_valkey(redis, lambda: refused_submits(5), by_scripts=True)
    marker_ms = await redis.pttl(keys.project_active_pruned("p"))
    await redis.delete(keys.project_active_pruned("p"))  # as a minute later
    a_minute_later = await sent_to_valkey(redis, lambda: refused_submits(2), by_scripts=True)

    assert record_reads(first_minute) == 3  # the three waiting tasks' records, read by the first try
    assert 0 < marker_ms <= keys.PRUNE_EVERY_MS
    assert record_reads(a_minute_later) == 3


async def test_concurrent_submissions_never_pass_the_waiting_cap(start_service):
    first = await start_service(workers=False, limits=LimitsConfig(queued_per_project=5))
    second = await start_service(workers=False, limits=LimitsConfig(queued_per_project=5))

    responses = await asyncio.gather(
        *(post_submit(url, API_KEY, "race") for url in [first.base_url, second.base_url] * 10)
    )

    assert sorted(r.status for r in responses) == [200] * 5 + [429] * 15


async def test_a_retry_counts_against_the_waiting_cap(start_service):
    taskd = await start_service(workers=False, limits=LimitsConfig(queued_per_project=1))
    task = await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="p")
    async with taskd.client.delete(f"/api/v1/tasks/{task['task_id']}"):
        pass
    await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="p")

    async with taskd.client.post(f"/api/v1/tasks/{task['task_id']}/retry") as response:
        body = await response.json()

    assert response.status == 429 and body["error"] == "rate_limited"


async def test_a_full_queue_answers_503_with_retry_after(start_service):
    taskd = await start_service(workers=False, limits=LimitsConfig(max_queue_length=3))
    for _ in range(3):
        await taskd.submit("generate_video", TASK_DATA["generate_video"])

    async with taskd.client.post("/api/v1/tasks/submit", json=submit_body()) as response:
        body = await response.json()
    other_queue = await taskd.submit("generate_image", TASK_DATA["generate_image"])

    assert response.status == 503
    assert body["error"] == "service_unavailable" and "gpu_heavy" in body["message"]
    assert body["retry_after"] == int(response.headers["Retry-After"]) > 0
    assert other_queue["status"] == "queued"


def test_the_limits_are_set_by_their_documented_names():
    environ = {
        "TASKD_LIMITS__SUBMIT_PER_MINUTE": "10",
        "TASKD_LIMITS__STATUS_PER_MINUTE": "20",
        "TASKD_LIMITS__CONCURRENT_PER_PROJECT": "5",
        "TASKD_LIMITS__MAX_QUEUE_LENGTH": "0",
    }

    limits = load_config(None, environ).limits

    assert (limits.submit_per_minute, limits.status_per_minute, limits.concurrent_per_project) == (10, 20, 5)
    assert limits.max_queue_length == 0


def test_the_waiting_cap_is_set_by_its_documented_name_and_defaults_to_a_quarter_of_a_queue():
    # Equal to a queue's cap, as before, one project (one key holder) took every place of a queue,
    # and every other project's submits to it were refused with 503 until its tasks started.
    limits = load_config(None, {}).limits
    assert (limits.queued_per_project, limits.max_queue_length) == (2_500, 10_000)
    assert load_config(None, {"TASKD_LIMITS__QUEUED_PER_PROJECT": "7"}).limits.queued_per_project == 7


async def test_a_project_under_its_waiting_cap_is_admitted_without_counting_its_running_tasks(
    start_service, redis
):
    taskd = await start_service(workers=False, limits=LimitsConfig(queued_per_project=3))
    # The first call of a script in a fresh Valkey is refused (NOSCRIPT), loaded and sent again.
    await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="p")

    async def submit() -> None:
        await taskd.submit("generate_video", TASK_DATA["generate_video"], project_id="p")

    ran = await sent_to_valkey(redis, submit, by_scripts=True)

    # Fewer tasks than the cap, queued or running, so fewer than the cap wait: no need to subtract.
    assert any(keys.project_active("p") in command for command in ran)
    assert not any(keys.project_processing("p") in command for command in ran)


async def test_a_limited_submit_spends_its_quota_in_the_round_trip_that_stores_the_task(start_service, redis):
    taskd = await start_service(
        workers=False, limits=LimitsConfig(submit_per_minute=5, concurrent_per_project=0)
    )
    # The first call of a script in a fresh Valkey is refused (NOSCRIPT), loaded and sent again.
    await taskd.submit("generate_video", TASK_DATA["generate_video"])
    submitted = {}

    async def submit() -> None:
        submitted.update(await taskd.submit("generate_video", TASK_DATA["generate_video"]))

    sent = await sent_to_valkey(redis, submit)

    quota = keys.rate_limit("submit", key_id(API_KEY))
    spending = [command for command in sent if quota in command]
    assert len(spending) == 1
    assert spending[0].startswith("EVALSHA")
    assert submitted["task_id"] in spending[0]
    assert await redis.zcard(quota) == 2


async def test_a_submit_over_the_rate_limit_stores_nothing(start_service, redis):
    taskd = await start_service(
        workers=False, limits=LimitsConfig(submit_per_minute=1, concurrent_per_project=0)
    )
    await taskd.submit("generate_video", TASK_DATA["generate_video"])
    stored = await redis.keys(keys.task("*"))

    refused = await post_submit(taskd.base_url, API_KEY)

    assert refused.status == 429
    assert await redis.keys(keys.task("*")) == stored
    assert int(await redis.hget(keys.METRICS, "total_tasks")) == 1


async def test_a_submit_refused_as_invalid_still_spends_its_unit_of_the_quota(start_service):
    taskd = await start_service(
        workers=False, limits=LimitsConfig(submit_per_minute=2, concurrent_per_project=0)
    )
    async with taskd.client.post("/api/v1/tasks/submit", json={"project_id": "rl"}) as invalid:
        await invalid.read()

    accepted = await post_submit(taskd.base_url, API_KEY)
    refused = await post_submit(taskd.base_url, API_KEY)

    assert invalid.status == 400
    assert invalid.headers["RateLimit"].startswith('"submit";r=1;')
    assert accepted.status == 200
    assert refused.status == 429


async def test_a_submit_that_redis_refuses_sends_no_second_script_to_spend_its_unit(start_service, redis):
    # A Redis that refuses the submit (full here; paused or hung alike) would refuse the spend too: a
    # second round trip only held the answer a second redis.socket_timeout on a Redis that hangs.
    taskd = await start_service(
        workers=False, limits=LimitsConfig(submit_per_minute=5, concurrent_per_project=0)
    )
    await taskd.submit("generate_video", TASK_DATA["generate_video"])  # the scripts loaded
    quota = keys.rate_limit("submit", key_id(API_KEY))
    refused = []

    async def submit() -> None:
        await redis.config_set("maxmemory", (await redis.info("memory"))["used_memory"] // 2)
        try:
            refused.append(await post_submit(taskd.base_url, API_KEY))
        finally:
            await redis.config_set("maxmemory", 0)

    sent = await sent_to_valkey(redis, submit)

    assert refused[0].status == 503
    assert len([command for command in sent if quota in command]) == 1


async def _twelve_listed(start_service, monkeypatch, limits: LimitsConfig):
    """A service without workers whose project "listed" holds 12 queued tasks, its index read in
    stretches of 5 ids: a whole listing makes three calls of list.lua."""
    monkeypatch.setattr(records, "LIST_STRETCH", 5)
    taskd = await start_service(workers=False, limits=limits)
    for _ in range(12):
        await taskd.submit("noop", {}, project_id="listed")
    return taskd


async def test_a_listing_spends_one_status_unit_per_call_it_makes_on_the_projects_index(
    start_service, redis, monkeypatch
):
    taskd = await _twelve_listed(start_service, monkeypatch, LimitsConfig(concurrent_per_project=0))

    async with taskd.client.get("/api/v1/projects/listed/tasks") as response:
        body = await response.json()

    assert response.status == 200 and body["pagination"]["total"] == 12
    assert response.headers["RateLimit"].startswith('"status";r=997;')
    assert await redis.zcard(keys.rate_limit("status", key_id(API_KEY))) == 3


async def test_a_listing_after_one_that_counted_an_unchanged_project_spends_one_status_unit(
    start_service, redis, monkeypatch
):
    # The first listing reads the 12 ids in three calls of list.lua and keeps the counts; the
    # pages after it read only themselves, however far down they are.
    taskd = await _twelve_listed(start_service, monkeypatch, LimitsConfig(concurrent_per_project=0))
    await project_quiet(redis, "listed")
    async with taskd.client.get("/api/v1/projects/listed/tasks") as first:
        assert first.status == 200

    async with taskd.client.get("/api/v1/projects/listed/tasks", params={"page": 3, "limit": 5}) as last:
        body = await last.json()

    assert last.status == 200 and body["pagination"]["total"] == 12 and len(body["tasks"]) == 2
    assert last.headers["RateLimit"].startswith('"status";r=996;')
    assert await redis.zcard(keys.rate_limit("status", key_id(API_KEY))) == 4


async def test_a_listing_costing_more_than_the_status_quota_spends_all_of_it_and_is_answered(
    start_service, redis, monkeypatch
):
    taskd = await _twelve_listed(start_service, monkeypatch, LimitsConfig(status_per_minute=2))

    async with taskd.client.get("/api/v1/projects/listed/tasks") as listed:
        pass
    async with taskd.client.get("/api/v1/projects/listed/tasks") as refused:
        body = await refused.json()

    assert listed.status == 200 and listed.headers["RateLimit"].startswith('"status";r=0;')
    assert refused.status == 429 and body["error"] == "rate_limited"
    assert await redis.zcard(keys.rate_limit("status", key_id(API_KEY))) == 2


async def test_each_event_stream_started_spends_a_status_unit(start_service, redis):
    taskd = await start_service(workers=False, limits=LimitsConfig(status_per_minute=2))
    task_id = (await taskd.submit("noop", {}))["task_id"]
    async with taskd.client.delete(f"/api/v1/tasks/{task_id}") as cancelled:
        assert cancelled.status == 200
    answers = []

    # An ended task's stream sends its events and closes: as good as a status read.
    for _ in range(3):
        async with taskd.client.get(f"/api/v1/tasks/{task_id}/events") as response:
            await response.read()
            answers.append((response.status, response.headers.get("Retry-After")))

    assert [status for status, _ in answers] == [200, 200, 429]
    assert answers[2][1] is not None and int(answers[2][1]) >= 1
    assert await redis.zcard(keys.rate_limit("status", key_id(API_KEY))) == 2


async def test_an_event_stream_given_its_key_in_the_query_spends_that_keys_quota(start_service, redis):
    taskd = await start_service(workers=False)
    task_id = (await taskd.submit("noop", {}))["task_id"]
    async with taskd.client.delete(f"/api/v1/tasks/{task_id}") as cancelled:
        assert cancelled.status == 200

    async with (
        aiohttp.ClientSession() as keyless,
        keyless.get(
            f"{taskd.base_url}/api/v1/tasks/{task_id}/events", params={"api_key": API_KEY}
        ) as response,
    ):
        await response.read()

    assert response.status == 200 and response.headers["RateLimit"].startswith('"status";r=999;')
    assert await redis.zcard(keys.rate_limit("status", key_id(API_KEY))) == 1


async def test_submits_refused_for_the_rate_limit_spend_nothing(start_service, redis):
    taskd = await start_service(
        workers=False, limits=LimitsConfig(submit_per_minute=3, concurrent_per_project=0)
    )

    statuses = [(await post_submit(taskd.base_url, API_KEY)).status for _ in range(6)]

    assert statuses == [200, 200, 200, 429, 429, 429]
    assert await redis.zcard(keys.rate_limit("submit", key_id(API_KEY))) == 3


async def test_a_listing_of_a_project_its_key_may_not_see_spends_nothing(start_service, redis):
    scoped = "key-of-project-own-only-7d2e0a"
    taskd = await start_service(
        workers=False, auth=AuthConfig(api_keys=[API_KEY], keys=[ScopedKey(scoped, ["own"])])
    )
    await taskd.submit("noop", {}, project_id="theirs")

    async with (
        aiohttp.ClientSession(headers={"X-API-Key": scoped}) as session,
        session.get(f"{taskd.base_url}/api/v1/projects/theirs/tasks") as response,
    ):
        await response.read()

    assert response.status == 404 and "RateLimit" not in response.headers
    assert await redis.zcard(keys.rate_limit("status", key_id(scoped))) == 0


async def test_a_project_event_stream_started_spends_a_status_unit(start_service, redis):
    taskd = await start_service(workers=False, limits=LimitsConfig(status_per_minute=1))

    async with taskd.client.get("/api/v1/projects/watched/events") as first:
        pass
    async with taskd.client.get("/api/v1/projects/watched/events") as second:
        # A project's stream never ends by itself: its body is read only when it is the 429's.
        body = await second.json() if second.status == 429 else None

    assert first.status == 200 and first.headers["RateLimit"].startswith('"status";r=0;')
    assert second.status == 429 and body is not None and body["error"] == "rate_limited"
    assert await redis.zcard(keys.rate_limit("status", key_id(API_KEY))) == 1


# A process's request entries differ from every other's by a random part drawn when it starts
# (taskd.http.ratelimit._Nonces): a child forked from it after that (multiprocessing's fork
# workers, a preforking server) draws one of its own, or its requests and its parent's that share a
# millisecond would be one entry of their key's log, each counted once for two.
FORKED_NONCES = """
    import os
    from taskd.http import ratelimit
    ratelimit._nonce()
    reading, writing = os.pipe()
    if os.fork() == 0:
        os.write(writing, ratelimit._nonce().encode())
        os._exit(0)
    os.wait()
    print(os.read(reading, 100).decode(), ratelimit._nonce())
"""


def test_a_forked_process_draws_request_nonces_of_its_own():
    ran = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORKED_NONCES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    child, parent = ran.stdout.split()

    assert child.split(".")[0] != parent.split(".")[0]
