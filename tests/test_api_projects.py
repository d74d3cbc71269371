"""GET /api/v1/projects/{project_id}/tasks: newest first, filters, pagination."""

from __future__ import annotations

import pytest
from examples import TASK_DATA
from redis_probes import project_quiet as quiet


async def listing(service, project_id, **params):
    async with service.client.get(f"/api/v1/projects/{project_id}/tasks", params=params) as response:
        return response.status, await response.json()


@pytest.fixture
async def api_only(start_service):
    return await start_service(workers=False)


async def ten_tasks_in_stretches_of_four(service, monkeypatch):
    """Ten queued tasks of project "p", oldest first, listed four index ids a call of list.lua (three
    stretches, so that a listing crosses from one to the next)."""
    from taskd.store import records

    monkeypatch.setattr(records, "LIST_STRETCH", 4)
    return [
        (await service.submit("generate_video", {"duration": 7}, project_id="p"))["task_id"]
        for _ in range(10)
    ]


async def test_tasks_are_listed_newest_first(api_only):
    ids = [
        (await api_only.submit("generate_video", {"duration": 7}, project_id="p"))["task_id"]
        for _ in range(3)
    ]

    _, body = await listing(api_only, "p")

    assert [task["task_id"] for task in body["tasks"]] == ids[::-1]


async def test_tasks_created_within_one_millisecond_are_listed_newest_first(
    api_only, submits_within_one_millisecond
):
    ids = [
        (await api_only.submit("generate_video", {"duration": 7}, project_id="p"))["task_id"]
        for _ in range(6)
    ]

    _, body = await listing(api_only, "p")

    assert [task["task_id"] for task in body["tasks"]] == ids[::-1]


async def test_list_entries_have_the_documented_fields(api_only):
    await api_only.submit("evaluate_department", TASK_DATA["evaluate_department"], project_id="p")

    _, body = await listing(api_only, "p")

    entry = body["tasks"][0]
    assert {
        "task_id",
        "project_id",
        "task_type",
        "status",
        "task_data",
        "result",
        "created_at",
        "updated_at",
    } <= set(entry)
    assert entry["task_data"] == TASK_DATA["evaluate_department"]


async def test_default_page_is_twenty_tasks(api_only):
    for _ in range(23):
        await api_only.submit("generate_video", {"duration": 7}, project_id="p")

    _, body = await listing(api_only, "p")

    assert len(body["tasks"]) == 20
    assert body["pagination"] == {"page": 1, "limit": 20, "total": 23, "total_pages": 2}


async def test_last_page_holds_the_remainder(api_only):
    for _ in range(5):
        await api_only.submit("generate_video", {"duration": 7}, project_id="p")

    _, body = await listing(api_only, "p", page=3, limit=2)

    assert len(body["tasks"]) == 1
    assert body["pagination"] == {"page": 3, "limit": 2, "total": 5, "total_pages": 3}


async def test_page_past_the_end_is_empty(api_only):
    await api_only.submit("generate_video", {"duration": 7}, project_id="p")

    status, body = await listing(api_only, "p", page=5)

    assert status == 200
    assert body["tasks"] == []
    assert body["pagination"]["total"] == 1


async def test_limit_of_one_hundred_is_allowed(api_only):
    status, body = await listing(api_only, "p", limit=100)

    assert status == 200
    assert body["pagination"]["limit"] == 100


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", 101),
        ("limit", 0),
        ("page", 0),
        ("page", -1),
        ("page", "x"),
        ("page", "1.5"),
        ("page", "1716740004670293120385024"),
        ("page", "٣"),
    ],
)
async def test_out_of_range_paging_is_a_validation_error(api_only, name, value):
    status, body = await listing(api_only, "p", **{name: value})

    assert status == 400
    assert body["error"] == "validation_error"
    assert name in body["details"]


async def test_unknown_project_has_no_tasks(api_only):
    status, body = await listing(api_only, "nobody")

    assert status == 200
    assert body == {"tasks": [], "pagination": {"page": 1, "limit": 20, "total": 0, "total_pages": 0}}


async def test_a_listing_of_an_unknown_project_keeps_nothing(api_only, redis):
    # Counts were kept for any project id a key listed (an hour each): a key looping over made-up
    # ids filled Valkey with them, ~60,000 an hour at the default `status` quota.
    from taskd import keys

    await listing(api_only, "nobody")

    assert not await redis.exists(keys.project_counts("nobody"))


async def test_status_filter(api_only):
    keep = await api_only.submit("generate_video", {"duration": 7}, project_id="p")
    gone = await api_only.submit("generate_video", {"duration": 7}, project_id="p")
    await api_only.client.delete(f"/api/v1/tasks/{gone['task_id']}")

    _, queued = await listing(api_only, "p", status="queued")
    _, cancelled = await listing(api_only, "p", status="cancelled")

    assert [t["task_id"] for t in queued["tasks"]] == [keep["task_id"]]
    assert [t["task_id"] for t in cancelled["tasks"]] == [gone["task_id"]]
    assert queued["pagination"]["total"] == 1


async def test_task_type_filter(api_only):
    await api_only.submit("generate_video", {"duration": 7}, project_id="p")
    evaluation = await api_only.submit(
        "evaluate_department", TASK_DATA["evaluate_department"], project_id="p"
    )

    _, body = await listing(api_only, "p", task_type="evaluate_department")

    assert [t["task_id"] for t in body["tasks"]] == [evaluation["task_id"]]


async def test_invalid_status_filter_is_refused(api_only):
    status, body = await listing(api_only, "p", status="sleeping")

    assert status == 400
    assert "status" in body["details"]


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("status", ["completed", "failed"]),
        ("task_type", ["generate_video", "generate_image"]),
        ("page", ["1", "2"]),
        ("limit", ["5", "5"]),
    ],
)
async def test_a_parameter_given_twice_is_refused_not_read_as_its_first_value(api_only, name, values):
    async with api_only.client.get(
        "/api/v1/projects/p/tasks", params=[(name, value) for value in values]
    ) as response:
        status, body = response.status, await response.json()

    assert (status, body) == (
        400,
        {
            "error": "validation_error",
            "message": "Invalid query parameters",
            "details": {name: f"{name} must be given once, not 2 times"},
        },
    )


async def test_projects_are_isolated(api_only):
    await api_only.submit("generate_video", {"duration": 7}, project_id="a")

    _, body = await listing(api_only, "b")

    assert body["tasks"] == []


async def test_expired_records_drop_out_of_the_listing(api_only, redis):
    from taskd import keys

    task = await api_only.submit("generate_video", {"duration": 7}, project_id="p")
    await redis.delete(keys.task(task["task_id"]))

    _, body = await listing(api_only, "p")

    assert body["pagination"]["total"] == 0
    assert await redis.zcard(keys.project("p")) == 0


async def test_records_expire_after_the_configured_ttl(api_only, redis):
    from taskd import keys

    task = await api_only.submit("generate_video", {"duration": 7}, project_id="p")

    ttl = await redis.ttl(keys.task(task["task_id"]))

    assert 24 * 3600 - 60 < ttl <= 24 * 3600


async def test_a_page_past_expired_records_over_several_stretches_of_the_index_is_exact(
    api_only, redis, monkeypatch
):
    from taskd import keys

    ids = await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    newest_first = ids[::-1]
    for gone in (newest_first[1], newest_first[2], newest_first[6]):
        await redis.delete(keys.task(gone))
    alive = [
        task_id
        for task_id in newest_first
        if task_id not in (newest_first[1], newest_first[2], newest_first[6])
    ]

    _, second_page = await listing(api_only, "p", page=2, limit=3)
    _, queued = await listing(api_only, "p", page=3, limit=3, status="queued")

    assert [task["task_id"] for task in second_page["tasks"]] == alive[3:6]
    assert second_page["pagination"]["total"] == 7
    assert [task["task_id"] for task in queued["tasks"]] == alive[6:]
    assert await redis.zcard(keys.project("p")) == 7


async def test_tasks_submitted_during_a_listing_neither_show_in_it_nor_move_its_later_stretches(
    api_only, redis, monkeypatch
):
    from taskd.store import TaskStore

    ids = await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    store = TaskStore(redis, 3600)
    read_stretch = store._list
    stretches = 0

    async def two_submits_after_the_first_stretch(**call):
        nonlocal stretches
        stretches += 1
        if stretches == 2:
            for _ in range(2):
                await api_only.submit("generate_video", {"duration": 7}, project_id="p")
        return await read_stretch(**call)

    monkeypatch.setattr(store, "_list", two_submits_after_the_first_stretch)

    page, total = await store.list_project("p", status=None, task_type=None, offset=3, limit=6)

    assert [record.task_id for record in page] == ids[::-1][3:9]
    assert total == 10


async def test_tasks_created_at_the_same_instant_are_each_listed_once_across_stretches(
    api_only, redis, monkeypatch
):
    from taskd import keys

    ids = await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    # One score for all ten in the project's index, as if created in the same microsecond.
    await redis.zadd(keys.project("p"), dict.fromkeys(ids, 1_796_000_000_000.5))

    _, first = await listing(api_only, "p", limit=5)
    _, second = await listing(api_only, "p", page=2, limit=5)

    listed = [task["task_id"] for task in first["tasks"] + second["tasks"]]
    assert sorted(listed) == sorted(ids)
    assert first["pagination"]["total"] == second["pagination"]["total"] == 10


async def test_a_listing_reads_only_its_pages_records_from_the_api(api_only, redis):
    from redis_probes import sent_to_valkey

    for _ in range(30):
        await api_only.submit("generate_video", {"duration": 7}, project_id="p")

    sent = await sent_to_valkey(redis, lambda: listing(api_only, "p", limit=5, status="queued"))

    # The index is matched inside Valkey (list.lua); the API reads the five records it shows.
    assert sum(1 for command in sent if command.startswith("HGETALL ")) == 5
    assert not [command for command in sent if command.startswith(("EXISTS ", "HMGET "))]


async def aged_and_gone(redis, project_id: str, ids: list[str], gone: list[str]) -> None:
    """Make `ids` created more than a task_ttl (24 h) ago, and the records of `gone` expired."""
    import time

    from taskd import keys

    long_ago_ms = (time.time() - 25 * 3600) * 1000
    await redis.zadd(keys.project(project_id), dict.fromkeys(ids, long_ago_ms), xx=True)
    await redis.delete(*(keys.task(task_id) for task_id in gone))


async def test_a_submit_drops_the_ids_of_expired_records_from_a_project_that_is_never_listed(api_only, redis):
    # A steady pipeline's project: every submit pushes its index's expiry back, and nobody lists
    # it, so without this the index kept every id it ever had.
    from taskd import keys

    ids = [
        (await api_only.submit("generate_video", {"duration": 7}, project_id="p"))["task_id"]
        for _ in range(5)
    ]
    kept, gone = ids[0], ids[1:]  # the first still kept (a keep_for), the others expired
    await aged_and_gone(redis, "p", ids, gone)
    await redis.delete(keys.project_pruned("p"))  # a minute later

    newest = await api_only.submit("generate_video", {"duration": 7}, project_id="p")

    members = {member.decode() for member in await redis.zrange(keys.project("p"), 0, -1)}
    assert members == {kept, newest["task_id"]}


async def test_a_project_index_is_read_for_expired_records_at_most_once_a_minute(api_only, redis):
    from taskd import keys

    first = await api_only.submit("generate_video", {"duration": 7}, project_id="p")
    await aged_and_gone(redis, "p", [first["task_id"]], [first["task_id"]])

    await api_only.submit("generate_video", {"duration": 7}, project_id="p")

    assert await redis.zcard(keys.project("p")) == 2
    assert 0 < await redis.pttl(keys.project_pruned("p")) <= keys.PRUNE_EVERY_MS


async def test_a_listing_after_one_that_read_the_whole_index_reads_only_its_page(
    api_only, redis, monkeypatch
):
    from redis_probes import sent_to_valkey

    ids = await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    await quiet(redis)
    await listing(api_only, "p")  # reads the whole index, and keeps its counts
    answers = []

    async def second_page():
        answers.append(await listing(api_only, "p", page=2, limit=3))

    ran = await sent_to_valkey(redis, second_page, by_scripts=True)

    _, body = answers[0]
    assert [task["task_id"] for task in body["tasks"]] == ids[::-1][3:6]
    assert body["pagination"]["total"] == 10
    # No record is read for the count: only the kept counts, the index's page and the stream's last id.
    assert not [command for command in ran if command.startswith(("EXISTS ", "PTTL ", "HMGET {taskd}:task:"))]
    assert not [command for command in ran if command.startswith("ZREVRANGEBYSCORE ")]  # no list.lua


@pytest.mark.parametrize("status", [None, "queued", "cancelled"])
async def test_pages_read_with_the_kept_counts_are_those_of_a_whole_read(
    api_only, redis, monkeypatch, status
):
    from taskd import keys

    ids = await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    for task_id in (ids[1], ids[4], ids[5], ids[8]):
        async with api_only.client.delete(f"/api/v1/tasks/{task_id}") as cancelled:
            assert cancelled.status == 200
    filters = {"status": status} if status else {}
    whole, kept = [], []
    await quiet(redis)

    for page in range(1, 6):
        await redis.delete(keys.project_counts("p"))
        whole.append(await listing(api_only, "p", page=page, limit=2, **filters))
        kept.append(await listing(api_only, "p", page=page, limit=2, **filters))

    assert kept == whole
    assert await redis.exists(keys.project_counts("p"))


async def test_a_task_submitted_after_a_listing_is_in_the_next_ones_count(api_only, redis, monkeypatch):
    ids = await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    await quiet(redis)
    await listing(api_only, "p")

    newest = await api_only.submit("generate_video", {"duration": 7}, project_id="p")
    _, body = await listing(api_only, "p", page=2, limit=3)

    assert body["pagination"]["total"] == 11
    assert [task["task_id"] for task in body["tasks"]] == [*ids[::-1]][2:5]
    assert newest["task_id"] not in [task["task_id"] for task in body["tasks"]]


async def test_a_status_changed_after_a_listing_is_in_the_next_ones_counts(api_only, redis, monkeypatch):
    ids = await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    await quiet(redis)
    await listing(api_only, "p", status="queued")

    async with api_only.client.delete(f"/api/v1/tasks/{ids[3]}") as cancelled:
        assert cancelled.status == 200
    _, queued = await listing(api_only, "p", status="queued")
    _, gone = await listing(api_only, "p", status="cancelled")

    assert queued["pagination"]["total"] == 9
    assert [task["task_id"] for task in gone["tasks"]] == [ids[3]]


async def test_a_record_that_expired_after_a_listing_is_not_in_the_next_ones_count(
    api_only, redis, monkeypatch
):
    import asyncio

    from taskd import keys

    ids = await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    await quiet(redis)
    await redis.pexpire(keys.task(ids[6]), 1500)
    _, before = await listing(api_only, "p")

    async with asyncio.timeout(30):
        while await redis.exists(keys.task(ids[6])):
            await asyncio.sleep(0.05)
    _, after = await listing(api_only, "p", page=2, limit=3)

    assert before["pagination"]["total"] == 10
    assert after["pagination"]["total"] == 9
    assert [task["task_id"] for task in after["tasks"]] == [ids[5], ids[4], ids[3]]


async def test_counts_of_a_listing_a_submit_came_during_are_not_kept(api_only, redis, monkeypatch):
    from taskd import keys
    from taskd.store import TaskStore

    await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    await quiet(redis)
    store = TaskStore(redis, 3600)
    read_stretch = store._list
    stretches = 0

    async def a_submit_after_the_first_stretch(**call):
        nonlocal stretches
        stretches += 1
        if stretches == 2:
            await api_only.submit("generate_video", {"duration": 7}, project_id="p")
        return await read_stretch(**call)

    monkeypatch.setattr(store, "_list", a_submit_after_the_first_stretch)

    _, total = await store.list_project("p", status=None, task_type=None, offset=0, limit=5)

    assert total == 10
    assert not await redis.exists(keys.project_counts("p"))
    _, body = await listing(api_only, "p")
    assert body["pagination"]["total"] == 11


async def test_a_listing_of_a_project_that_just_changed_keeps_no_counts(api_only, redis, monkeypatch):
    from taskd import keys

    await ten_tasks_in_stretches_of_four(api_only, monkeypatch)

    _, body = await listing(api_only, "p")  # within LIST_QUIET_MS of the last submit

    assert body["pagination"]["total"] == 10
    assert not await redis.exists(keys.project_counts("p"))


async def test_a_progress_event_after_a_listing_leaves_its_counts_in_use(api_only, redis, monkeypatch):
    import json

    from redis_probes import sent_to_valkey

    from taskd import keys

    ids = await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    await quiet(redis)
    await listing(api_only, "p")
    # As lib/emit.lua writes a progress report (a running task's): nothing a listing counts changed.
    progress = {
        "type": "progress",
        "task_id": ids[0],
        "project_id": "p",
        "status": "processing",
        "progress": 0.5,
    }
    await redis.xadd(keys.project_events("p"), {"event": json.dumps(progress, separators=(",", ":"))})
    answers = []

    async def again():
        answers.append(await listing(api_only, "p", limit=3))

    ran = await sent_to_valkey(redis, again, by_scripts=True)

    assert answers[0][1]["pagination"]["total"] == 10
    assert not [command for command in ran if command.startswith("ZREVRANGEBYSCORE ")]  # no list.lua


@pytest.mark.parametrize("limit", [3, 5])  # a page read by rank, and one from a stretch's checkpoint
async def test_pages_read_with_the_kept_counts_list_tasks_created_at_one_instant_once(
    api_only, redis, monkeypatch, limit
):
    from taskd import keys

    ids = await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    await redis.zadd(keys.project("p"), dict.fromkeys(ids, 1_796_000_000_000.5))
    await quiet(redis)
    await listing(api_only, "p")  # counts the project, and keeps the counts
    listed = []

    for page in range(1, 5):
        _, body = await listing(api_only, "p", page=page, limit=limit)
        listed += [task["task_id"] for task in body["tasks"]]

    assert sorted(listed) == sorted(ids)
    assert len(listed) == 10
    assert await redis.exists(keys.project_counts("p"))


async def test_counts_of_a_project_without_an_event_stream_are_not_used_once_a_later_stream_expired(
    api_only, redis, monkeypatch
):
    # A stream expires events_ttl after its last event (storage.task_ttl: a minute at least), while
    # records with a longer `keep_for` stay listed. Counts kept against "no stream" held again once
    # the stream of a later submit had expired too, and the listing missed that task.
    from taskd import keys

    ids = await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    await redis.delete(keys.project_events("p"))  # as its expiry does
    await listing(api_only, "p")
    newest = await api_only.submit("generate_video", {"duration": 7}, project_id="p")
    await redis.delete(keys.project_events("p"))

    _, body = await listing(api_only, "p", limit=3)

    assert body["pagination"]["total"] == 11
    assert [task["task_id"] for task in body["tasks"]] == [newest["task_id"], ids[9], ids[8]]


async def test_a_filtered_page_whose_kept_checkpoint_is_past_the_index_end_is_counted_again(
    api_only, redis, monkeypatch
):
    # Records deleted by hand, and dropped from the index by a listing that came across them: the
    # kept checkpoints point past the index's end. list_look.lua found it and answered without
    # saying whether to count for keeps, and the API failed with a 500.
    from taskd import keys

    ids = await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    await quiet(redis)
    await listing(api_only, "p")  # keeps the counts: checkpoints at ranks 0, 4 and 8
    for task_id in ids[:7]:
        await redis.delete(keys.task(task_id))
        await redis.zrem(keys.project("p"), task_id)

    status, body = await listing(api_only, "p", status="queued", page=9, limit=1)

    assert status == 200
    assert body["pagination"]["total"] == 3
    assert body["tasks"] == []


async def test_a_filtered_last_page_from_the_kept_counts_reads_no_further_than_its_last_match(
    api_only, redis, monkeypatch
):
    # One cancelled task, the newest: the page holding it is the last. It read on to the index's
    # end looking for matches the counts say are not there: on a project of a million tasks, a
    # thousand stretches for the one unit its checkpoints made it cost.
    from redis_probes import sent_to_valkey

    ids = await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    async with api_only.client.delete(f"/api/v1/tasks/{ids[9]}") as cancelled:
        assert cancelled.status == 200
    await quiet(redis)
    await listing(api_only, "p")  # keeps the counts
    answers = []

    async def last_page():
        answers.append(await listing(api_only, "p", status="cancelled", limit=5))

    ran = await sent_to_valkey(redis, last_page, by_scripts=True)

    assert [task["task_id"] for task in answers[0][1]["tasks"]] == [ids[9]]
    assert answers[0][1]["pagination"]["total"] == 1
    assert len([command for command in ran if command.startswith("ZREVRANGEBYSCORE ")]) == 1


async def test_a_listing_reads_no_event_past_the_newest_status_one(api_only, redis, monkeypatch):
    # Events after the newest status one were read in batches (1, 7, then 24 entries): a status
    # event carries its task's result (up to execution.result_max_bytes, a MiB), and behind eight
    # progress reports each listing copied up to 24 of them into Valkey's Lua (~40 ms a request
    # at a MiB each, for one status unit).
    import json

    from redis_probes import sent_to_valkey

    from taskd import keys

    await ten_tasks_in_stretches_of_four(api_only, monkeypatch)
    for _ in range(8):
        progress = {"type": "progress", "project_id": "p", "status": "processing", "progress": 0.5}
        await redis.xadd(keys.project_events("p"), {"event": json.dumps(progress, separators=(",", ":"))})

    ran = await sent_to_valkey(redis, lambda: listing(api_only, "p"), by_scripts=True)

    reads = [command.split() for command in ran if command.startswith("XREVRANGE ")]
    assert sum(int(read[-1]) for read in reads) == 9  # the 8 progress reports and the status event


async def test_a_page_of_more_than_ten_tasks_is_read_and_sent_ten_records_at_a_time(api_only, monkeypatch):
    # A page of 100 tasks holding a MiB of task_data and of result each was read and rendered
    # whole: some 270 MB of the process a listing, for as long as its client took to read it.
    from taskd.http.projects import RECORDS_AT_ONCE
    from taskd.store import TaskStore

    ids = [
        (await api_only.submit("generate_video", {"duration": 7}, project_id="p"))["task_id"]
        for _ in range(25)
    ]
    read_at_once = []
    get_many = TaskStore.get_many

    async def counted(self, task_ids):
        read_at_once.append(len(task_ids))
        return await get_many(self, task_ids)

    monkeypatch.setattr(TaskStore, "get_many", counted)

    status, body = await listing(api_only, "p", limit=25)

    assert status == 200
    assert [task["task_id"] for task in body["tasks"]] == ids[::-1]
    assert body["pagination"] == {"page": 1, "limit": 25, "total": 25, "total_pages": 1}
    assert read_at_once == [RECORDS_AT_ONCE, RECORDS_AT_ONCE, 5]


async def test_a_page_whose_records_cannot_be_read_part_way_ends_in_a_closed_connection_without_a_traceback(
    api_only, monkeypatch, caplog
):
    import aiohttp
    from redis.exceptions import ConnectionError as RedisConnectionError

    from taskd.store import TaskStore

    for _ in range(25):
        await api_only.submit("generate_video", {"duration": 7}, project_id="p")
    get_many = TaskStore.get_many
    calls = 0

    async def lost_after_the_first_group(self, task_ids):
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RedisConnectionError("Connection closed by server.")
        return await get_many(self, task_ids)

    monkeypatch.setattr(TaskStore, "get_many", lost_after_the_first_group)

    with pytest.raises(aiohttp.ClientPayloadError):
        await listing(api_only, "p", limit=25)

    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert "project listing cut off after it began: ConnectionError" in caplog.text


async def test_a_page_whose_first_records_cannot_be_read_is_a_503_not_a_cut_off_200(api_only, monkeypatch):
    # Nothing of the page is sent before its first group is read: a Redis lost then is the 503 a
    # client retries after its Retry-After, as for a page of ten, not a 200 cut off.
    from redis.exceptions import ConnectionError as RedisConnectionError

    from taskd.store import TaskStore

    for _ in range(25):
        await api_only.submit("generate_video", {"duration": 7}, project_id="p")

    async def lost(self, task_ids):
        raise RedisConnectionError("Connection closed by server.")

    monkeypatch.setattr(TaskStore, "get_many", lost)

    async with api_only.client.get("/api/v1/projects/p/tasks", params={"limit": 25}) as response:
        body = await response.json()

    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert body["error"] == "service_unavailable"


async def test_a_page_cut_off_part_way_by_a_bug_logs_its_traceback(api_only, monkeypatch, caplog):
    # Only a lost Redis is the expected cut-off (a WARNING line, no traceback); anything else is a
    # bug to find, as it was when the page was rendered whole (a 500 with its traceback).
    import aiohttp

    from taskd.http import projects

    for _ in range(25):
        await api_only.submit("generate_video", {"duration": 7}, project_id="p")
    rendered = 0
    list_item_view = projects.list_item_view

    def broken_after_ten(record):
        nonlocal rendered
        rendered += 1
        if rendered > 10:
            raise KeyError("status")
        return list_item_view(record)

    monkeypatch.setattr(projects, "list_item_view", broken_after_ten)

    with pytest.raises(aiohttp.ClientPayloadError):
        await listing(api_only, "p", limit=25)

    assert [type(r.exc_info[1]) for r in caplog.records if r.exc_info] == [KeyError]
