"""The GPU scheduler on simulated devices: slots per device, whole-device jobs, the choice of device,
release on every ending, a host-wide count shared by processes."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest
from conftest import API_KEY, TERMINAL, child_env
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from taskd import keys
from taskd.config import GpuConfig, LimitsConfig
from taskd.gpu.devices import GpuInventory, SimulatedBackend, select
from taskd.gpu.hosts import HostPublisher
from taskd.gpu.nvml import DeviceReading
from taskd.gpu.scheduler import RESERVATION_MS, GpuScheduler
from taskd.heartbeat import Heartbeat, WorkerInfo

GB = 1024**3
UNLIMITED = LimitsConfig(submit_per_minute=0, status_per_minute=0, concurrent_per_project=0)


class FakeNvml:
    """Devices as NVML would report them, with memory in use chosen by the test."""

    def __init__(self, used_gb: list[float]) -> None:
        self.used_gb = used_gb

    def read(self) -> list[DeviceReading]:
        return [
            DeviceReading(i, f"Fake GPU {i}", 10.0 * i, int(used * GB), 16 * GB)
            for i, used in enumerate(self.used_gb)
        ]


async def live_worker(redis: Redis, worker_id: str) -> None:
    await Heartbeat(redis, WorkerInfo(worker_id, "h", 1, [], 0.0), 1, 30, lambda: 0).beat()


def overlaps(intervals: list[tuple[float, float, int]], at: float) -> int:
    return sum(slots for start, end, slots in intervals if start <= at < end)


def check_capacity(results: list[dict], slots_of: dict[str, int], capacity: int) -> None:
    by_device: dict[str, list[tuple[float, float, int]]] = {}
    for result in results:
        by_device.setdefault(result["device"], []).append(
            (result["started"], result["ended"], slots_of[result["task_type"]])
        )
    for intervals in by_device.values():
        for start, _, _ in intervals:
            assert overlaps(intervals, start) <= capacity


def test_device_selection_follows_gpu_devices():
    readings = FakeNvml([0, 0, 0, 0]).read()

    assert [d.index for d in select(readings, "auto")] == [0, 1, 2, 3]
    assert [d.index for d in select(readings, "count:2")] == [0, 1]
    assert [d.index for d in select(readings, "index:1,3")] == [1, 3]
    assert select(readings, "none") == []


async def test_device_with_most_free_slots_then_most_free_memory_is_chosen(redis):
    await live_worker(redis, "w1")
    scheduler = GpuScheduler(redis, GpuInventory(GpuConfig(slots=2), FakeNvml([8, 2, 4])), "w1", host="h")

    first = await scheduler.try_acquire("a", 1)
    second = await scheduler.try_acquire("b", 1)
    third = await scheduler.try_acquire("c", 1)

    assert [first.device, second.device, third.device] == [1, 2, 0]


async def test_whole_device_job_waits_for_an_idle_device(redis):
    await live_worker(redis, "w1")
    scheduler = GpuScheduler(redis, GpuInventory(GpuConfig(slots=4), FakeNvml([0])), "w1", host="h")
    small = await scheduler.try_acquire("small", 1)

    assert await scheduler.try_acquire("whole", 0) is None
    await scheduler.release(small)
    assert (await scheduler.try_acquire("whole", 0)).slots == 4
    assert await scheduler.try_acquire("another", 1) is None


async def test_slots_of_a_dead_worker_come_back(redis):
    await live_worker(redis, "alive")
    dead = GpuScheduler(redis, GpuInventory(GpuConfig(slots=1), FakeNvml([0])), "gone", host="h")
    alive = GpuScheduler(redis, GpuInventory(GpuConfig(slots=1), FakeNvml([0])), "alive", host="h")
    await redis.set(keys.worker("gone"), "{}")
    await dead.try_acquire("orphan", 1)
    assert await alive.try_acquire("next", 1) is None

    await redis.delete(keys.worker("gone"))

    assert (await alive.try_acquire("next", 1)).device == 0


async def test_a_release_sent_again_leaves_the_slots_another_worker_took_for_the_same_task(redis):
    # A release is retried until Redis answers (Executor._release_lease): one whose HDEL went through
    # and whose reply was lost is sent again, and by then the task, queued again, may hold the
    # device under another worker of the host. The second HDEL dropped that holder while it ran.
    await live_worker(redis, "w1")
    await live_worker(redis, "w2")
    earlier = GpuScheduler(redis, GpuInventory(GpuConfig(slots=2), FakeNvml([0])), "w1", host="h")
    later = GpuScheduler(redis, GpuInventory(GpuConfig(slots=2), FakeNvml([0])), "w2", host="h")
    lease = await earlier.try_acquire("t", 1)
    await earlier.release(lease)
    taken = await later.try_acquire("t", 1)

    await earlier.release(lease)

    assert await redis.hget(later.device_key(taken.device), "t") == b"w2|1"


async def test_a_reservation_left_by_a_task_that_stopped_asking_expires(redis):
    await live_worker(redis, "w1")
    scheduler = GpuScheduler(redis, GpuInventory(GpuConfig(slots=2), FakeNvml([0])), "w1", host="h")
    await scheduler.try_acquire("small", 1)

    assert await scheduler.try_acquire("whole", 0) is None  # reserves the device, then is cancelled

    assert await redis.get(scheduler.device_key("reserved")) is not None
    assert 0 < await redis.pttl(scheduler.device_key("reserved")) <= RESERVATION_MS


async def test_the_slot_holders_of_a_host_that_stops_beating_expire_with_its_report(redis):
    # A host killed while its jobs held slots, and never back under that id (a container's
    # hostname): only an acquire on that host would drop its holders, so they must expire.
    await live_worker(redis, "w1")
    scheduler = GpuScheduler(redis, GpuInventory(GpuConfig(slots=2), FakeNvml([0, 0])), "w1", host="gone")
    await scheduler.try_acquire("a", 1)
    await scheduler.try_acquire("b", 0)

    await HostPublisher(redis, scheduler, ttl=3).publish()

    ttls = [await redis.pttl(scheduler.device_key(index)) for index in (0, 1)]
    assert all(0 < ttl <= 3000 for ttl in ttls), ttls


async def test_a_device_taken_before_its_hosts_next_beat_expires_with_the_worker_that_took_it(redis):
    # The host is killed after its job took an idle device (a new hash) and before its next beat,
    # which is what renews the holders' expiry: the hash must not be kept for ever.
    await live_worker(redis, "w1")
    scheduler = GpuScheduler(redis, GpuInventory(GpuConfig(slots=2), FakeNvml([0])), "w1", host="gone")
    await scheduler.try_acquire("a", 1)

    # As long as the worker's liveness key (live_worker's 30 s), past which its holder counts for nothing.
    assert 0 < await redis.pttl(scheduler.device_key(0)) <= 30_000


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    jobs=st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=12),
    devices=st.integers(min_value=1, max_value=3),
    slots=st.integers(min_value=1, max_value=4),
)
async def test_generated_job_mixes_never_overfill_a_device(redis, jobs, devices, slots):
    await redis.flushdb()
    await live_worker(redis, "w1")
    scheduler = GpuScheduler(
        redis, GpuInventory(GpuConfig(slots=slots, wait_poll=0.005), FakeNvml([0] * devices)), "w1", host="h"
    )
    held: dict[int, int] = {}
    worst: dict[int, int] = {}
    wanted = [min(w, slots) for w in jobs]

    async def job(n: int, want: int) -> None:
        lease = await scheduler.acquire(f"t{n}", want)
        held[lease.device] = held.get(lease.device, 0) + lease.slots
        worst[lease.device] = max(worst.get(lease.device, 0), held[lease.device])
        await asyncio.sleep(0.002 * (n % 3))
        held[lease.device] -= lease.slots
        await scheduler.release(lease)

    async with asyncio.timeout(20):
        await asyncio.gather(*(job(n, want) for n, want in enumerate(wanted)))

    assert all(used <= slots for used in worst.values())
    assert all(value == 0 for value in held.values())


# Through the service: jobs of GPU queues on simulated devices.


async def run_all(service, specs: list[tuple[str, dict]]) -> list[dict]:
    ids = [(await service.submit(task_type, data))["task_id"] for task_type, data in specs]
    bodies = [await service.wait_terminal(task_id, timeout=60) for task_id in ids]
    assert all(body["status"] == "completed" for body in bodies), bodies
    return [{**body["result"], "task_type": body["task_type"]} for body in bodies]


async def test_jobs_get_cuda_visible_devices_of_the_device_they_hold(start_service):
    service = await start_service(gpu_backend=SimulatedBackend(2), gpu=GpuConfig(slots=2), limits=UNLIMITED)

    results = await run_all(service, [("gpu_hold", {"seconds": 0.2})] * 4)

    assert all(r["cuda_visible_devices"] == r["device"] for r in results)
    assert {r["device"] for r in results} == {"0", "1"}


async def test_mixed_jobs_never_exceed_slots_and_whole_device_jobs_are_exclusive(start_service):
    service = await start_service(gpu_backend=SimulatedBackend(2), gpu=GpuConfig(slots=2), limits=UNLIMITED)
    specs = [("gpu_hold_whole", {"seconds": 0.3}), ("gpu_hold", {"seconds": 0.2})] * 4

    results = await run_all(service, specs)

    check_capacity(results, {"gpu_hold": 1, "gpu_hold_whole": 2}, capacity=2)


async def held_by(service, task_id: str) -> None:
    async with asyncio.timeout(20):
        while True:
            async with service.client.get("/api/v1/health") as response:
                if any(task_id in gpu["running"] for gpu in (await response.json())["gpus"]):
                    return
            await asyncio.sleep(0.02)


async def test_slots_come_back_after_a_cancel(start_service):
    service = await start_service(gpu_backend=SimulatedBackend(1), gpu=GpuConfig(slots=1), limits=UNLIMITED)
    holder = await service.submit("gpu_hold", {"seconds": 30})
    await service.wait_for(holder["task_id"], lambda b: b["status"] == "processing")
    await held_by(service, holder["task_id"])
    waiter = await service.submit("gpu_hold", {"seconds": 0.1})
    waiting = await service.wait_for(waiter["task_id"], lambda b: b["current_step"] == "waiting_for_gpu")

    await service.client.delete(f"/api/v1/tasks/{holder['task_id']}")
    body = await service.wait_terminal(waiter["task_id"])

    assert waiting["status"] == "queued"
    assert body["status"] == "completed"


async def test_slots_come_back_after_a_hard_kill(start_service):
    from conftest import TEST_TASK_MODULES

    from taskd.config import TasksConfig

    service = await start_service(
        gpu_backend=SimulatedBackend(1),
        gpu=GpuConfig(slots=1),
        tasks=TasksConfig(modules=TEST_TASK_MODULES, hard_time_limits={"gpu_hold_whole": 0.5}),
        limits=UNLIMITED,
    )
    killed = await service.submit("gpu_hold_whole", {"seconds": 30})
    await service.wait_for(killed["task_id"], lambda b: b["status"] == "processing")
    await held_by(service, killed["task_id"])
    after = await service.submit("gpu_hold", {"seconds": 0.1})

    killed_body = await service.wait_terminal(killed["task_id"])
    after_body = await service.wait_terminal(after["task_id"])

    assert "hard time limit" in killed_body["error"]
    assert after_body["status"] == "completed"


async def test_health_lists_devices_with_their_slot_holders(start_service):
    service = await start_service(gpu_backend=SimulatedBackend(1), gpu=GpuConfig(slots=2), limits=UNLIMITED)
    task = await service.submit("gpu_hold", {"seconds": 30})
    await service.wait_for(task["task_id"], lambda b: b["status"] == "processing")

    async with service.client.get("/api/v1/health") as response:
        body = await response.json()

    assert body["system_load"]["gpu_utilization"] == [0.0]
    assert body["gpus"][0]["slots_used"] == 1
    assert body["gpus"][0]["running"] == {task["task_id"]: 1}


async def test_without_gpus_gpu_queues_run_on_the_cpu_and_health_says_so(start_service):
    service = await start_service(gpu_backend=SimulatedBackend(0), limits=UNLIMITED)

    results = await run_all(service, [("gpu_hold", {"seconds": 0})])
    async with service.client.get("/api/v1/health") as response:
        body = await response.json()

    assert results[0]["device"] is None
    assert body["gpus"] == []
    assert "GPU queues run on the CPU" in body["gpu_note"]


# Two worker processes on one host share the per-device count.


def env_for(tmp_path) -> dict[str, str]:
    return child_env(tmp_path / "data", TASKD_GPU__SIMULATE="1", TASKD_GPU__SLOTS="1")


async def test_two_worker_processes_share_the_host_wide_slot_count(spawn_taskd, tmp_path):
    api = spawn_taskd("serve", "--no-worker", env=env_for(tmp_path))
    for _ in range(2):
        spawn_taskd("worker", "--queues", "gpu_medium", env=env_for(tmp_path), wait_listening=False)
    headers = {"X-API-Key": API_KEY}
    async with aiohttp.ClientSession(api.base_url, headers=headers) as session:
        ids = []
        for _ in range(4):
            body = {"project_id": "gpu", "task_type": "gpu_hold", "task_data": {"seconds": 0.3}}
            async with session.post("/api/v1/tasks/submit", json=body) as response:
                ids.append((await response.json())["task_id"])
        results = []
        async with asyncio.timeout(60):
            for task_id in ids:
                while True:
                    async with session.get(f"/api/v1/tasks/{task_id}/status") as response:
                        status = await response.json()
                    if status["status"] in TERMINAL:
                        results.append(status["result"] | {"task_type": "gpu_hold"})
                        break
                    await asyncio.sleep(0.05)

    assert [r["device"] for r in results] == ["0"] * 4
    check_capacity(results, {"gpu_hold": 1}, capacity=1)


async def test_slots_of_a_killed_worker_process_come_back(spawn_taskd, tmp_path):
    api = spawn_taskd("serve", "--no-worker", env=env_for(tmp_path))
    doomed = spawn_taskd("worker", "--queues", "gpu_medium", env=env_for(tmp_path), wait_listening=False)
    headers = {"X-API-Key": API_KEY}
    async with aiohttp.ClientSession(api.base_url, headers=headers) as session:

        async def status(task_id: str) -> dict:
            async with session.get(f"/api/v1/tasks/{task_id}/status") as response:
                return await response.json()

        body = {"project_id": "gpu", "task_type": "gpu_hold", "task_data": {"seconds": 2}}
        async with session.post("/api/v1/tasks/submit", json=body) as response:
            held = (await response.json())["task_id"]
        async with asyncio.timeout(30):
            while (await status(held))["status"] != "processing":
                await asyncio.sleep(0.05)
        doomed.stop(signal.SIGKILL)
        # The only slot is still recorded for the dead worker; the task, taken back, needs it again.
        spawn_taskd("worker", "--queues", "gpu_medium", env=env_for(tmp_path), wait_listening=False)
        async with asyncio.timeout(60):
            while (final := await status(held))["status"] not in TERMINAL:
                await asyncio.sleep(0.1)

    assert final["status"] == "completed"
    assert final["attempt"] == 2


async def test_a_task_waiting_for_a_gpu_is_queued_not_processing_and_starts_when_it_gets_a_device(
    start_service,
):
    service = await start_service(gpu_backend=SimulatedBackend(1), gpu=GpuConfig(slots=1), limits=UNLIMITED)
    holder = await service.submit("gpu_hold", {"seconds": 30})
    await service.wait_for(holder["task_id"], lambda b: b["status"] == "processing")
    await held_by(service, holder["task_id"])
    waiter = await service.submit("gpu_hold", {"seconds": 0.1})

    waiting = await service.wait_for(waiter["task_id"], lambda b: b["current_step"] == "waiting_for_gpu")
    async with service.client.get("/api/v1/tasks/metrics") as response:
        metrics = (await response.json())["metrics"]
    await service.client.delete(f"/api/v1/tasks/{holder['task_id']}")
    cancelled = await service.status(holder["task_id"])
    done = await service.wait_terminal(waiter["task_id"])

    assert (waiting["status"], waiting["started_at"]) == ("queued", None)
    assert metrics["currently_running"] == 1  # the holder only: waiting is not running
    assert done["status"] == "completed"
    assert done["started_at"] >= cancelled["cancelled_at"]  # it began once it had the device


async def test_a_task_type_that_needs_no_gpu_runs_on_a_gpu_queue_without_taking_a_slot(
    start_service, tmp_path
):
    from taskd.config import MediaConfig

    media = MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch"))
    service = await start_service(
        gpu_backend=SimulatedBackend(1), gpu=GpuConfig(slots=1), limits=UNLIMITED, media=media
    )
    holder = await service.submit("gpu_hold", {"seconds": 30})
    await held_by(service, holder["task_id"])

    # generate_video encodes with ffmpeg on the CPU: it runs while the only slot is held.
    video = await service.submit("generate_video", {"duration": 1, "fps": 4, "resolution": "320x240"})
    body = await service.wait_terminal(video["task_id"], timeout=60)

    assert body["status"] == "completed"
    assert (await service.status(holder["task_id"]))["status"] == "processing"


async def test_the_config_overrides_what_a_task_type_needs_from_a_gpu(start_service):
    gpu = GpuConfig(slots=1, task_needs={"gpu_hold": "none"})
    service = await start_service(gpu_backend=SimulatedBackend(1), gpu=gpu, limits=UNLIMITED)
    first = await service.submit("gpu_hold", {"seconds": 30})
    second = await service.submit("gpu_hold", {"seconds": 30})

    for task in (first, second):  # both at once on a one-slot device: neither holds a slot
        body = await service.wait_for(task["task_id"], lambda b: b["status"] == "processing")
        assert body["status"] == "processing"


def test_a_task_type_and_the_config_accept_only_the_three_gpu_needs():
    from taskd.tasks.registry import default_registry
    from taskd.tasks.spec import TaskType

    with pytest.raises(ValueError, match="gpu"):
        TaskType("x", object, queue="default", expected_duration=1, gpu="half")
    with pytest.raises(ValueError, match="task_needs"):
        GpuConfig(task_needs={"gpu_hold": "half"})
    assert {t.gpu for t in default_registry().types.values()} == {"none"}  # no built-in type uses a GPU


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    jobs=st.lists(
        st.tuples(st.sampled_from([0, 1, 2]), st.integers(min_value=1, max_value=4)), min_size=1, max_size=14
    ),
    devices=st.integers(min_value=1, max_value=3),
    slots=st.integers(min_value=2, max_value=4),
)
# Found by the search once: a two-slot job kept waiting by one-slot jobs that arrived after it.
@example(jobs=[(1, 1), (2, 1), (1, 2), (1, 2), (1, 2)], devices=1, slots=2)
async def test_whole_device_jobs_are_not_starved_and_devices_never_overfill(redis, jobs, devices, slots):
    """Jobs (slots wanted, 0 = whole device; run time in ticks) arrive in order; at each tick every
    waiting job tries, in order, as the workers' polls do, and any that fits starts: slot jobs behind a
    waiting whole-device job go first where they fit, but not on the device reserved for it."""
    await redis.flushdb()
    await live_worker(redis, "w1")
    scheduler = GpuScheduler(
        redis, GpuInventory(GpuConfig(slots=slots), FakeNvml([0] * devices)), "w1", host="h"
    )
    waiting = list(range(len(jobs)))
    running: dict[int, tuple[object, int]] = {}  # job -> (lease, tick it ends)
    started: dict[int, int] = {}
    tick = 0
    while waiting or running:
        for n, (lease, ends) in list(running.items()):
            if ends == tick:
                await scheduler.release(lease)
                del running[n]
        for n in list(waiting):
            want, duration = jobs[n]
            lease = await scheduler.try_acquire(f"t{n}", want, score=n)
            if lease is not None:
                waiting.remove(n)
                running[n], started[n] = (lease, tick + duration), tick
        per_device: dict[int, list[int]] = {}
        for lease, _ in running.values():
            per_device.setdefault(lease.device, []).append(lease.slots)
        assert all(sum(held) <= slots for held in per_device.values())  # never more than its slots
        assert all(len(held) == 1 for held in per_device.values() if slots in held)  # whole means alone
        tick += 1
        assert tick < 1000

    longest = max(duration for _, duration in jobs)
    for n, (want, _) in enumerate(jobs):
        work_ahead = sum(duration for _, duration in jobs[:n])
        # At worst the work ahead of it runs one job at a time, then the reserved device drains.
        assert started[n] <= work_ahead + longest, (n, want, started)


async def scripts_run_in(redis: Redis, seconds: float) -> int:
    """Lua scripts Valkey ran over `seconds` (claims, slot takes, takes, heartbeats...)."""
    before = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
    await asyncio.sleep(seconds)
    return (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0) - before


async def test_an_idle_gpu_worker_does_not_spin_on_a_job_another_worker_runs(start_service, redis):
    from conftest import TEST_TASK_MODULES

    from taskd.config import TasksConfig

    sections = {
        "gpu_backend": SimulatedBackend(2),
        "gpu": GpuConfig(slots=2, task_needs={"sleep": "slot"}),
        "tasks": TasksConfig(modules=TEST_TASK_MODULES, routes={"sleep": "gpu_medium"}),
        "limits": UNLIMITED,
    }
    service = await start_service(**sections)
    await start_service(http=False, **sections)
    task = await service.submit("sleep", {"seconds": 30, "steps": 1})
    await service.wait_for(task["task_id"], lambda b: b["status"] == "processing")

    # The other process's worker has free slots and finds the running job first on the queue: it
    # asks for it once a poll (worker.poll_delay, 0.5 s; ~24 scripts in 2 s in all), not again at
    # once in a loop (~1,700).
    assert await scripts_run_in(redis, 2.0) < 100


async def test_a_gpu_worker_starts_a_job_queued_behind_more_running_jobs_than_one_poll_reads(start_service):
    from conftest import TEST_TASK_MODULES

    from taskd.config import Config, QueueConfig, TasksConfig

    sections = {
        "gpu_backend": SimulatedBackend(30),
        "gpu": GpuConfig(slots=4, task_needs={"sleep": "slot"}),
        "tasks": TasksConfig(modules=TEST_TASK_MODULES, routes={"sleep": "gpu_medium"}),
        "limits": UNLIMITED,
    }
    # One process runs 101 jobs, a full house; they stay on arq's set, in front of later jobs.
    busy = {**Config().queues, "gpu_medium": QueueConfig(concurrency=101, timeout=300)}
    service = await start_service(queues=busy, **sections)
    running = []
    for first in (0, 50, 100):
        batch = [{"project_id": "p", "task_type": "sleep", "task_data": {"seconds": 60, "steps": 1}}]
        async with service.client.post(
            "/api/v1/tasks/batch", json={"tasks": batch * min(50, 101 - first)}
        ) as r:
            running += [task["task_id"] for task in (await r.json())["tasks"]]
    for task_id in running:
        await service.wait_for(task_id, lambda b: b["status"] == "processing")
    # Another with one slot: its poll reads 100 due jobs (arq's queue_read_limit), all running.
    idle = {**Config().queues, "gpu_medium": QueueConfig(concurrency=1, timeout=300)}
    await start_service(http=False, serve_queues=["gpu_medium"], queues=idle, **sections)

    task = await service.submit("sleep", {"seconds": 0.1, "steps": 1})

    assert (await service.wait_terminal(task["task_id"]))["status"] == "completed"
