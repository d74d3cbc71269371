"""One arq worker per queue in this event loop: woken on submit, restarted if it dies, stopped gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from functools import partial
from typing import Any, Protocol, cast

import attrs
import orjson
from arq.connections import ArqRedis
from arq.typing import WorkerCoroutine
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.asyncio import Redis

from taskd import keys
from taskd.backoff import Backoff
from taskd.config import Config
from taskd.queue.task_queue import JOB_FUNCTION
from taskd.stopping import cancel_and_wait
from taskd.store import Start, Taken, Takes
from taskd.tasks.registry import Registry

Claim = Callable[[str, int], Awaitable[Start]]
# (free slots, the partitions to look in or None for all, whether to recover) -> what the take started.
Take = Callable[[int, Collection[int] | None, bool], Awaitable[Takes]]
# arq's job function as taskd registers it: (ctx, task_id) -> whether the run already dropped the job.
JobFunction = Callable[[dict[str, Any], str], Awaitable[bool]]


class JobRunner(Protocol):
    """What the workers need from whatever runs tasks (taskd.engine.executor.Executor), so the queue
    room imports nothing from the engine above it."""

    worker_id: str

    @property
    def running(self) -> Mapping[str, object]:
        """Tasks running in this process, by task id."""
        ...

    def run_of(self, task_id: str) -> str | None:
        """The job of the task's latest run in this process until its end is written; None: none."""
        ...

    async def claim(self, queue: str, job_id: str, lock_ms: int) -> Start:
        """Claim a job of `queue` and start its task (one round trip)."""
        ...

    async def take(
        self, queue: str, count: int, where: Collection[int] | None = None, recover: bool = False
    ) -> Takes:
        """Start up to `count` due jobs of `queue` in fair order (one round trip a partition; only in
        the partitions `where` when given); with `recover`, the tasks this worker runs come back too."""
        ...

    def job_for(self, queue: str) -> JobFunction:
        """The job function that runs the task a claim started."""
        ...

    def handing_back(self) -> None:
        """The running jobs are about to be cancelled and their tasks handed back."""
        ...


log = logging.getLogger("taskd.queue")

# arq cancels a job at its own timeout and re-runs it once its lock expires; both must come
# well after taskd's own hard limit and cancel grace, which decide a task's fate.
ARQ_TIMEOUT_MARGIN = 60.0
STOP_TIMEOUT = 5.0
# Job ids are unique per enqueue, so arq's per-job try counter never matters.
ARQ_MAX_TRIES = 1_000_000


class _HandedBackJobs(logging.Filter):
    """arq logs a job cancelled at shutdown as a failure; taskd has handed that task back already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[0] is asyncio.CancelledError)


logging.getLogger("arq.worker").addFilter(_HandedBackJobs())


def _log_failed_drop(job_id: str, drop: asyncio.Future[None]) -> None:
    if not drop.cancelled() and (error := drop.exception()) is not None:
        # Left on its queue, the job is dropped by the take that finds it: its task has moved on.
        log.warning("dropping job %s at the stop failed: %s", job_id, error)


class TaskdWorker(Worker):
    """arq's worker, woken by an event instead of sleeping a full poll delay between polls.

    With `take`, a poll is one script that starts as many due jobs as the worker has free slots
    (taskd/store/lua/take.lua); without it (a host with GPUs, which must hold a device's slots
    before each claim), arq's poll reads the queue and each job is claimed on its own.
    """

    def __init__(
        self,
        *args: object,
        claim: Claim,
        run_of: Callable[[str], str | None],
        lines: Sequence[tuple[Redis, str]],
        take: Take | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # arq's set of the queue in each partition, with the client of that partition (taskd.keys).
        self.lines = list(lines)
        self._turn = 0
        # Where the next look goes: the partitions the wake-ups since the last one named
        # (taskd.keys.woken), or every partition after a wake-up that named none, a freed slot or
        # the poll delay.
        self._woken_in: set[int] = set()
        self._everywhere = True
        self.wake = asyncio.Event()
        self.stopping = False
        self.polled = False  # it reached Redis at least once
        self._claim = claim
        # The job of a task's run in this process (any worker of it, this one or one it replaced)
        # until that run's end is written (JobRunner.run_of).
        self._run_of = run_of
        self._take = take
        # Whether a freed slot should take at once: not when the last take found nothing more and
        # left the worker in the idle set, where the next job wakes it (one empty take less a task).
        self._look_when_freed = True
        # Slots held for this process's submits, whose script may start a job for this worker
        # (hold); `settled` is set while none is held.
        self._held = 0
        self.settled = asyncio.Event()
        self.settled.set()
        # A wake-up came while a slot was held: the look it asked for may have found no free slot
        # or counted the held one as used, so a slot given back looks again.
        self._woken_while_held = False
        self._taking = False
        # Held slots whose submit lost its reply: the next take asks for the tasks this worker runs
        # (each such submit may have started one for it) and for that many fewer new ones.
        self._lost = 0
        # The start (its record's started_at) each job in `tasks` ran under here, so that a job whose
        # run has ended tells a take that started its task again (run it: _known) from one that
        # returned that same start (a lost reply's take, asking for this worker's tasks).
        self._started_at: dict[str, float | None] = {}

    async def _poll_iteration(self) -> None:
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            where = None if self._everywhere else frozenset(self._woken_in)
            self._everywhere, self._woken_in = False, set()
            if self._take is None:
                await self._poll_lines(where)
            else:
                lost, self._lost = self._lost, 0
                self._taking = True
                try:
                    # A task a lost reply's script started comes back with this take and runs in a
                    # free slot too: with the new ones, no more than the free slots (arq's
                    # semaphore holds one more than max_jobs, so it would not stop one too many).
                    free = self.max_jobs - self.job_counter
                    takes = await self._take(max(0, free - lost), where, lost > 0)
                finally:
                    self._taking = False
                self._look_when_freed = takes.look_when_freed
                for taken in takes.started:
                    await self._launch(taken)
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                self._started_at.pop(job_id, None)
                task.result()  # as arq's poll: an error in run_job is raised here
        await self.heart_beat()

    async def _poll_lines(self, where: Collection[int] | None) -> None:
        # arq's poll (its due jobs by score, each claimed on its own), over the queue's set in every
        # partition (or those `where` the wake-ups named), starting at the next partition each time
        # so that none is always last.
        self._turn = (self._turn + 1) % len(self.lines)
        for step in range(len(self.lines)):
            if self.job_counter >= self.max_jobs:
                return
            partition = (self._turn + step) % len(self.lines)
            if where is not None and partition not in where:
                continue
            client, line = self.lines[partition]
            # The jobs running on workers that claim one at a time stay on arq's set, in front: they
            # are read past (one EXISTS of their lock each, a page at a time) and not asked for, so
            # that with more of them running than one read holds, the jobs behind them still start,
            # and a worker with free slots does not take GPU slots for another's job at every poll.
            # Still at most `queue_read_limit` jobs are asked for a poll.
            offset, asked = self._queue_read_offset, 0
            while asked < self.queue_read_limit and self.job_counter < self.max_jobs:
                job_ids = await client.zrangebyscore(
                    line, min=float("-inf"), start=offset, num=self.queue_read_limit, max=timestamp_ms()
                )
                if not job_ids:
                    break
                async with client.pipeline(transaction=False) as pipe:
                    for job_id in job_ids:
                        pipe.exists(keys.arq_in_progress(job_id.decode()))
                    held = await pipe.execute()
                waiting = [job_id for job_id, is_held in zip(job_ids, held, strict=True) if not is_held]
                asked += len(waiting)
                await self.start_jobs(waiting)
                if len(job_ids) < self.queue_read_limit:
                    break
                offset += len(job_ids)

    def _known(self, taken: Taken) -> bool:
        # A job a recovering take (after a lost reply) returned that already runs here. A newer job
        # of a task whose earlier run here has not ended (the task was queued again meanwhile) is
        # not: it is run, and waits for that earlier run's end (Executor._run). Skipped, it never
        # ran, and the earlier run's end was written under its start. Nor is a job whose run here
        # has ended, listed until the poll's look after the take forgets it: the take started its
        # task again since (a failover lost the run's start, and its refused end left the job on
        # the queue: Executor._queued_again_under). Skipped, the task stayed `processing` here for
        # ever, unrun, and held (the reclaim left it alone). Unless the take returned that ended
        # run's own start: a take sent again after a lost reply returns the tasks this worker runs,
        # read before the run's end was written (over several partitions, the run can end while
        # the take looks in the next): run again, a completed task's handler ran a second time.
        job = self.tasks.get(taken.job_id)
        if job is not None and (
            not job.done()
            or taken.record is None
            or taken.record.started_at == self._started_at.get(taken.job_id)
        ):
            return True
        return taken.record is not None and self._run_of(taken.record.task_id) == taken.job_id

    async def _launch(self, taken: Taken) -> None:
        if self._known(taken):
            return
        # Immediate: take.lua started no more than the free slots (a recovered task may wait for one).
        await self.sem.acquire()
        self.job_counter += 1
        self._run_in_slot(taken)

    def _run_in_slot(self, taken: Taken) -> None:
        # The slot (the semaphore and job_counter) is held already.
        start = Start(claimed=True, score=taken.score, record=taken.record)
        ended = self.tasks.pop(taken.job_id, None)  # the job's earlier run here (_known)
        if ended is not None and not ended.cancelled() and (error := ended.exception()) is not None:
            # What the poll's look would have raised (and the worker restarted for): the new run
            # is not given up for it.
            log.warning("job %s failed: %s", taken.job_id, error)
        task = self.loop.create_task(self.run_job(taken.job_id, start))
        task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
        self.tasks[taken.job_id] = task
        self._started_at[taken.job_id] = None if taken.record is None else taken.record.started_at

    @property
    def idle(self) -> bool:
        """Whether its last take left it waiting in the idle set for the next job, and it is not taking."""
        return not self._look_when_freed and not self._taking

    async def hold(self) -> int | None:
        """Hold a free slot for a submit of this process whose script may start a job for this worker
        (submit.lua, `taker`): this worker's free slots, the held one included; None (nothing held)
        unless it waits in the idle set with a free slot, not taking, and takes batches.

        A take sent while a slot is held counts it as used, so the two never start more than the
        free slots; one already sent is waited out (no hold while `_taking`).
        """
        if (
            self._take is None
            or self.stopping
            or not self.allow_pick_jobs
            or not self.idle
            or self.job_counter >= self.max_jobs
            or self.sem.locked()
        ):
            return None
        room = self.max_jobs - self.job_counter
        await self.sem.acquire()  # immediate: not locked
        self.job_counter += 1
        self._held += 1
        self.settled.clear()
        return room

    def handed(self, takes: Takes | None) -> None:
        """The held slot's submit is stored: run what its script started for this worker in that slot,
        or give the slot back."""
        ran = False
        if takes is not None:
            self._look_when_freed = takes.look_when_freed
            for taken in takes.started:  # at most one: the script starts one job
                if not ran and not self._known(taken):
                    self._run_in_slot(taken)
                    ran = True
        if not ran:
            self._give_back()
        self._unhold()

    def lost(self) -> None:
        """The held slot's submit got no reply: its script may have started a job for this worker,
        which the next take, asking for the tasks this worker runs, finds (take.lua's recover)."""
        self._give_back()
        self._unhold()
        self._lost += 1
        self.woken(None)

    def _unhold(self) -> None:
        self._held -= 1
        if self._held == 0:
            self._woken_while_held = False
            self.settled.set()

    def _give_back(self) -> None:
        # A slot held and not used: nothing ended, so no look is due (unlike a finished job's slot),
        # unless a wake-up came meanwhile: the job that sent it may be waiting for this slot.
        self.job_counter -= 1
        self.sem.release()
        if self._woken_while_held:
            self.woken(None)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim and start each job while this worker has free slots (arq's rules; one round trip each,
        which also marks the task processing)."""
        for raw in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            job_id = raw.decode()
            if job_id in self.tasks or self._run_of(job_id.rsplit(".", 1)[0]) is not None:
                # Already running here: arq lists a job until it is dropped, and a claim by the
                # same worker counts as a retry of a lost reply, so it must not be asked again. A
                # newer job of a task whose run here has not ended is left on the queue too (not
                # claimed): it is claimed once that run's end is written, here or elsewhere.
                self.sem.release()
                continue
            self.job_counter += 1
            try:
                start = await self._claim(job_id, int(self.in_progress_timeout_s * 1000))
            except BaseException:
                # The slot is this worker's again: it outlives the error (WorkerPool._supervise).
                self.job_counter -= 1
                self.sem.release()
                raise
            if not start.claimed:
                self.job_counter -= 1
                self.sem.release()
                continue
            task = self.loop.create_task(self.run_job(job_id, start))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task
            self._started_at[job_id] = None if start.record is None else start.record.started_at

    async def run_job(self, job_id: str, start: Start) -> None:  # type: ignore[override]
        """Run the task a claim started, then make sure the job is gone: arq's run_job minus what taskd
        never uses.

        A job id is `<task id>.<n>` and the claim already started the task, so the payload need
        not be read; arq's retry counter, result key and abort set are unused (the record holds
        attempts and results; the executor decides retries and hand-backs). Measured with py-spy
        and bench/compare.py on a 2-core box: a worker draining 5000 queued noop tasks went from
        ~840 to ~600 µs of CPU per task with this, before the claim and the start became one script.
        """
        dropped = False
        if start.record is not None:
            try:
                # arq's own job timeout: a safety net well after taskd's hard limit (ARQ_TIMEOUT_MARGIN).
                # It is the run's: the job function moves it on by the time a start waits for the
                # end of its task's earlier run here (`deadline`: Executor._after_earlier_run).
                async with asyncio.timeout(self.job_timeout_s) as deadline:
                    ctx = {
                        **self.ctx,
                        "job_id": job_id,
                        "score": start.score,
                        "record": start.record,
                        "deadline": deadline,
                    }
                    dropped = await self.functions[JOB_FUNCTION].coroutine(ctx, start.record.task_id)
            except asyncio.CancelledError:
                # Shutdown: the executor has handed the task back under a new job id.
                self.jobs_failed += 1
            except Exception:
                log.exception("job %s failed", job_id)
                self.jobs_failed += 1
            else:
                self.jobs_complete += 1
        if not dropped:
            # The store drops the job in the script that ends the run; a skipped or failed run
            # leaves it to the worker.
            drop = asyncio.ensure_future(self._drop_job(job_id))
            try:
                await asyncio.shield(drop)
            except asyncio.CancelledError:
                # A stop cancelled the run again while the drop waits on a hung Redis: the drop goes
                # on alone, and its failure is said here, not as asyncio's ERROR "Task exception was
                # never retrieved" with a traceback once the process lets go of it.
                drop.add_done_callback(partial(_log_failed_drop, job_id))
                raise

    async def _drop_job(self, job_id: str) -> None:
        # What arq's finish_job does for a finished job that keeps no result, in one round trip.
        client, line = self.lines[keys.task_partition(job_id.rpartition(".")[0])]
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(keys.arq_in_progress(job_id))
            pipe.zrem(line, job_id)
            await pipe.execute()

    def woken(self, partition: int | None) -> None:
        """Look for jobs now: in `partition` (and those of the other wake-ups before the look), or
        everywhere when None."""
        if partition is None:
            self._everywhere = True
        else:
            self._woken_in.add(partition)
        if self._held:
            self._woken_while_held = True
        self.wake.set()

    async def main(self) -> None:
        """Poll, then wait for a wake-up (a submit, a finished job) or the poll delay; until stopped.

        Run again after an error (WorkerPool._supervise), it keeps its running jobs and slots."""
        self.ctx["redis"] = self.pool
        # Not ready (WorkerPool.unready) until it reaches Redis again, and its first look goes
        # everywhere: the partitions the failed look was woken for are not known any more.
        self.polled = False
        self._everywhere = True
        while not self.stopping:
            self.wake.clear()
            await self._poll_iteration()
            self.polled = True
            # asyncio.timeout, unlike wait_for on 3.11, never swallows a cancellation.
            try:
                async with asyncio.timeout(self.poll_delay_s):
                    await self.wake.wait()
            except TimeoutError:
                self._everywhere = True  # the poll's own look goes everywhere

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        if self._take is None or self._look_when_freed:
            # A slot is free and a job may be waiting for it, in any partition: look now.
            self.woken(None)


@attrs.frozen
class HeldSlot:
    """A free slot of this process's worker of a queue, held for one submit (taskd.store.Taker)."""

    worker: TaskdWorker
    worker_id: str
    room: int

    def handed(self, takes: Takes | None) -> None:
        """What the submit's script started for the worker: run it in the slot, or give the slot back."""
        self.worker.handed(takes)

    def lost(self) -> None:
        """The submit's reply was lost: give the slot back, and have the worker recover what it started."""
        self.worker.lost()


class WorkerPool:
    """Runs a TaskdWorker for each served queue and keeps it running."""

    def __init__(
        self,
        redis: Redis,
        executor: JobRunner,
        registry: Registry,
        config: Config,
        queues: list[str],
        *,
        take: bool = True,
        partition_clients: Sequence[Redis] | None = None,
    ) -> None:
        # arq's worker wants its own client class; it shares the connections of taskd's client.
        self.redis = ArqRedis(connection_pool=redis.connection_pool)
        # One client per partition (taskd.keys.partitions; all `redis` but on a cluster).
        self.clients = keys.client_per_partition(redis, partition_clients)
        self.executor = executor
        self.registry = registry
        self.config = config
        self.queues = queues
        # Whether the workers take jobs in batches (take.lua): not on a host with GPUs, whose
        # claims must hold a device's slots first (Executor.claim).
        self.take = take
        self.workers: dict[str, TaskdWorker] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False

    def _arq_timeout(self, queue: str) -> float:
        limits = [t.hard_time_limit or 0.0 for t in self.registry.types.values() if t.queue == queue]
        longest = max([self.config.queues[queue].timeout, *limits])
        return longest + self.config.execution.cancel_grace + ARQ_TIMEOUT_MARGIN

    def _make_worker(self, queue: str) -> TaskdWorker:
        return TaskdWorker(
            claim=partial(self.executor.claim, queue),
            run_of=self.executor.run_of,
            take=partial(self.executor.take, queue) if self.take else None,
            lines=[(client, keys.queue(queue, partition)) for partition, client in enumerate(self.clients)],
            # arq's protocol admits any arguments (`ctx, *args, **kwargs`); ours takes (ctx, task_id).
            functions=[func(cast(WorkerCoroutine, self.executor.job_for(queue)), name=JOB_FUNCTION)],
            queue_name=keys.queue(queue),
            redis_pool=self.redis,
            max_jobs=self.config.queues[queue].concurrency,
            job_timeout=self._arq_timeout(queue),
            keep_result=0,
            poll_delay=self.config.worker.poll_delay,
            handle_signals=False,
            retry_jobs=False,
            max_tries=ARQ_MAX_TRIES,
            job_serializer=orjson.dumps,
            job_deserializer=orjson.loads,
            log_results=False,
        )

    async def _supervise(self, queue: str) -> None:
        # arq's worker loop ends on the first Redis error; it starts again after a pause. The same
        # worker, not a new one: the jobs it started run on through the error, and only it counts
        # them (job_counter, its semaphore) and hands them back at a stop. A new worker counted
        # none of them and started `concurrency` more (a Redis restart on a host with GPUs, whose
        # poll meets it, had a queue of concurrency 2 run 3 jobs, more with each restart), and a
        # stop neither waited for them nor handed them back: their job processes were killed and
        # their tasks failed.
        restarts = Backoff.reconnect()
        worker = self._make_worker(queue)
        self.workers[queue] = worker
        while not self._stopping:
            try:
                await worker.main()
            except asyncio.CancelledError:
                if self._stopping:
                    return
                raise
            except Exception as exc:
                if worker.polled:
                    restarts.reset()
                delay = restarts.next_delay()
                log.warning("worker for queue %s stopped (%s); restarting in %.2f s", queue, exc, delay)
                await asyncio.sleep(delay)

    def start(self) -> None:
        """Start a supervised worker for every queue."""
        for queue in self.queues:
            self._supervisors.append(asyncio.create_task(self._supervise(queue), name=f"worker:{queue}"))

    async def hold(self, queue: str) -> HeldSlot | None:
        """A free slot of this process's worker of `queue`, held for a submit whose script may start
        a job for it (TaskdWorker.hold); None when that worker is not waiting for jobs."""
        worker = self.workers.get(queue)
        if worker is None or self._stopping:
            return None
        room = await worker.hold()
        return None if room is None else HeldSlot(worker, self.executor.worker_id, room)

    def wake(self, queue: str, partition: int | None = None) -> None:
        """Make the worker of `queue` (if this process serves it) look for jobs now: in `partition`
        when given (where the job that woke it is), else in every partition."""
        worker = self.workers.get(queue)
        if worker is not None:
            worker.woken(partition)

    def wake_all(self) -> None:
        """Make every worker of this process look for jobs now."""
        for worker in self.workers.values():
            worker.woken(None)

    def unready(self) -> list[str]:
        """The served queues whose worker has not reached Redis since it (re)started, or all when stopping."""
        if self._stopping:
            return list(self.queues)
        return [queue for queue in self.queues if not (queue in self.workers and self.workers[queue].polled)]

    @property
    def running_jobs(self) -> int:
        """Jobs running in this process now."""
        return len(self.executor.running)

    async def stop(self, grace: float) -> None:
        """Stop taking jobs, give running ones `grace` seconds, then cancel (hand back) what is left."""
        self._stopping = True
        for worker in self.workers.values():
            worker.allow_pick_jobs = False
            worker.stopping = True
            worker.wake.set()
        # A submit's script may still start a job for a worker in a slot held before: that job must
        # be among the running ones waited for (or handed back) below.
        for worker in self.workers.values():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT):
                    await worker.settled.wait()
        running = [
            task for worker in self.workers.values() for task in worker.tasks.values() if not task.done()
        ]
        if running:
            log.info("waiting up to %.0f s for %d running jobs", grace, len(running))
            _, unfinished = await asyncio.wait(running, timeout=grace)
            if unfinished:
                log.info("handing %d unfinished jobs back to their queues", len(unfinished))
                self.executor.handing_back()
            await cancel_and_wait(unfinished)
        # Each worker loop ends by itself once it sees `stopping`; cancelling one in the middle of
        # a Redis call would leave the connection half-used, so that is only the last resort.
        if self._supervisors:
            await asyncio.wait(self._supervisors, timeout=STOP_TIMEOUT)
        await cancel_and_wait(self._supervisors)
        self._supervisors.clear()
        # A take under way when the stop began started its jobs (processing under this worker) after
        # the running ones were gathered: handed back now, not left running unwatched while the
        # process goes on to close its connections (at a start-up that failed just after the workers
        # started, their hand-back then found no Redis and taskd took minutes to exit).
        await self.hand_back_late()
        if self.take and self.queues:
            # No submit should wake a worker that is gone (one killed is dropped when its turn comes).
            with contextlib.suppress(Exception):  # Redis may be gone already: best effort
                async with asyncio.timeout(STOP_TIMEOUT):
                    for partition, client in enumerate(self.clients):
                        async with client.pipeline(transaction=False) as pipe:
                            for queue in self.queues:
                                pipe.zrem(keys.idle(queue, partition), self.executor.worker_id)
                            await pipe.execute()

    async def hand_back_late(self) -> None:
        """Hand back the jobs started after `stop` gathered the running ones: by a take under way as it
        began, or by a submit's script for a slot held before it (TaskdWorker.hold) that answered
        after its wait for held slots. Called again once the API has stopped, when no submit is
        left: such a run went on past the stop, its task `processing` until the reclaim."""
        late = [task for worker in self.workers.values() for task in worker.tasks.values() if not task.done()]
        if late:
            log.info("handing %d jobs taken as the stop began back to their queues", len(late))
            self.executor.handing_back()
        await cancel_and_wait(late)
