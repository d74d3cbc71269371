"""Diagnostic task types for tests, benchmarks and checking a deployment; loaded only when configured.

Enable with `[tasks] modules = ["taskd.tasks.diagnostics"]` (env `TASKD_TASKS__MODULES`). They do
nothing useful for a user and some of them (`crash_worker`, `allocate`) hurt the worker on
purpose: never enable them on a production service. Handlers leave marker files under
`<data_dir>/diagnostics/<task_id>.<event>` (`started`, `cleanup`, `sigterm`, `soft_limit`) so a
test can see what happened inside a job process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import attrs

from taskd.config import Config
from taskd.tasks.spec import (
    Cancelled,
    ProcessContext,
    SoftTimeLimitExceeded,
    TaskContext,
    TaskError,
    TaskType,
    TransientError,
)
from taskd.validation import between


def _marker(config: Config, task_id: str, event: str, text: str = "") -> None:
    folder = config.data_path / "diagnostics"
    folder.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed into place: a watcher that sees the file sees its whole text.
    part = folder / f".{task_id}.{event}.{os.getpid()}"
    part.write_text(text)
    part.rename(folder / f"{task_id}.{event}")


def marker_path(data_dir: Path, task_id: str, event: str) -> Path:
    """Where a diagnostic handler leaves the marker of `event` for `task_id`."""
    return Path(data_dir) / "diagnostics" / f"{task_id}.{event}"


@attrs.frozen
class NoopInput:
    pass


async def noop(ctx: TaskContext, _: NoopInput) -> dict[str, Any]:
    """Return at once, saying when the handler started (wall clock, for latency benchmarks)."""
    return {"ok": True, "attempt": ctx.attempt, "handler_started_at": time.time()}


@attrs.frozen
class SleepInput:
    seconds: float = attrs.field(default=1.0, validator=between(0, 3600, "Seconds must be 0..3600"))
    steps: int = attrs.field(default=4, validator=between(1, 1000, "Steps must be 1..1000"))


async def sleep(ctx: TaskContext, data: SleepInput) -> dict[str, Any]:
    """Wait `seconds` in `steps`, reporting progress; cleanup (and a soft limit) leave markers."""
    _marker(ctx.config, ctx.task_id, "started")
    try:
        for step in range(data.steps):
            await asyncio.sleep(data.seconds / data.steps)
            await ctx.progress((step + 1) / data.steps, f"step_{step + 1}_of_{data.steps}")
    except SoftTimeLimitExceeded:
        _marker(ctx.config, ctx.task_id, "soft_limit")
        raise
    finally:
        _marker(ctx.config, ctx.task_id, "cleanup")
    return {"slept": data.seconds, "attempt": ctx.attempt}


@attrs.frozen
class RecordRunInput:
    seconds: float = attrs.field(default=0.0, validator=between(0, 3600, "Seconds must be 0..3600"))


def runs_path(data_dir: Path) -> Path:
    """The file where `record_run` appends one line per run: `<event> <task id> <attempt> <pid>`."""
    return Path(data_dir) / "diagnostics" / "runs"


async def record_run(ctx: TaskContext, data: RecordRunInput) -> dict[str, Any]:
    """Append `start`, wait `seconds`, append `end` (`stopped` when the wait is cancelled) to the runs
    file: what fault tests count runs with."""
    path = runs_path(ctx.config.data_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = f"{ctx.task_id} {ctx.attempt} {os.getpid()}\n"
    with path.open("a") as runs:  # one short O_APPEND write per line: lines never interleave
        runs.write("start " + line)
    try:
        await asyncio.sleep(data.seconds)
    except asyncio.CancelledError:
        with path.open("a") as runs:
            runs.write("stopped " + line)
        raise
    with path.open("a") as runs:
        runs.write("end " + line)
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@attrs.frozen
class FailInput:
    message: str = "diagnostic failure"
    transient: bool = False
    fail_times: int = attrs.field(
        default=1_000_000, validator=between(0, 1_000_000, "fail_times must be >= 0")
    )


async def fail(ctx: TaskContext, data: FailInput) -> dict[str, Any]:
    """Fail on the first `fail_times` attempts (transiently or not), then succeed."""
    if ctx.attempt <= data.fail_times:
        raise (TransientError if data.transient else TaskError)(data.message)
    return {"succeeded_on_attempt": ctx.attempt}


@attrs.frozen
class CpuInput:
    seconds: float = attrs.field(default=1.0, validator=between(0, 3600, "Seconds must be 0..3600"))
    ignore_sigterm: bool = False


def cpu(ctx: ProcessContext, data: CpuInput) -> dict[str, Any]:
    """Burn a core in a job process for `seconds`; report its pid; markers for SIGTERM and soft limit."""
    _marker(ctx.config, ctx.task_id, "started", str(os.getpid()))
    if data.ignore_sigterm:
        signal.signal(
            signal.SIGTERM, lambda *_: _marker(ctx.config, ctx.task_id, "sigterm", str(os.getpid()))
        )
    deadline = time.monotonic() + data.seconds
    next_report = 0.0
    try:
        while (left := deadline - time.monotonic()) > 0:
            if left <= next_report or next_report == 0.0:
                ctx.progress(1 - left / data.seconds if data.seconds else 1.0, "burning")
                next_report = left - 0.2
            sum(i * i for i in range(2000))
    except Cancelled:
        _marker(ctx.config, ctx.task_id, "sigterm", str(os.getpid()))
        raise
    except SoftTimeLimitExceeded:
        _marker(ctx.config, ctx.task_id, "soft_limit", str(os.getpid()))
        raise
    finally:
        _marker(ctx.config, ctx.task_id, "cleanup", str(os.getpid()))
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@attrs.frozen
class AllocateInput:
    megabytes: int = attrs.field(default=64, validator=between(1, 65536, "Megabytes must be 1..65536"))
    hold_seconds: float = attrs.field(default=5.0, validator=between(0, 3600, "Hold must be 0..3600"))


def allocate(ctx: ProcessContext, data: AllocateInput) -> dict[str, Any]:
    """Allocate and touch `megabytes` in a job process, then hold them."""
    block = bytearray(data.megabytes * 1024 * 1024)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    time.sleep(data.hold_seconds)
    return {"allocated_mb": data.megabytes, "pid": os.getpid()}


@attrs.frozen
class CrashInput:
    pass


async def crash_worker(ctx: TaskContext, _: CrashInput) -> dict[str, Any]:
    """Kill the worker process that runs this task (SIGKILL), as a crashing model server would."""
    _marker(ctx.config, ctx.task_id, f"started.{ctx.attempt}", str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)
    await asyncio.sleep(3600)
    return {}


@attrs.frozen
class GpuHoldInput:
    seconds: float = attrs.field(default=0.5, validator=between(0, 3600, "Seconds must be 0..3600"))


def gpu_hold(ctx: ProcessContext, data: GpuHoldInput) -> dict[str, Any]:
    """Hold the GPU the task was given for `seconds` in a job process; report which and when."""
    started = time.time()
    time.sleep(data.seconds)
    return {
        "device": ctx.device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started": started,
        "ended": time.time(),
        "pid": os.getpid(),
    }


@attrs.frozen
class CudaMatmulInput:
    size: int = attrs.field(default=4096, validator=between(16, 32768, "Size must be 16..32768"))
    iterations: int = attrs.field(default=200, validator=between(1, 100_000, "Iterations must be 1..100000"))


def cuda_matmul(ctx: ProcessContext, data: CudaMatmulInput) -> dict[str, Any]:
    """Matrix products on the GPU the task holds (PyTorch); the job process sees only that device."""
    try:
        import torch
    except ImportError:
        raise TaskError("PyTorch is not installed in taskd's environment") from None
    if not torch.cuda.is_available():
        raise TaskError("CUDA is not available in this job process")
    started = time.time()
    device = torch.device("cuda:0")  # CUDA_VISIBLE_DEVICES maps the held GPU to index 0
    matrix = torch.randn(data.size, data.size, device=device)
    for step in range(data.iterations):
        matrix = matrix @ matrix
        matrix = matrix / matrix.norm()
        if step % 20 == 0:
            torch.cuda.synchronize()
            ctx.progress(step / data.iterations, "multiplying")
    torch.cuda.synchronize()
    return {
        "device": ctx.device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpu_name": torch.cuda.get_device_name(0),
        "started": started,
        "ended": time.time(),
        "pid": os.getpid(),
    }


TASKS = [
    TaskType("noop", NoopInput, queue="default", expected_duration=0.01, handler=noop),
    TaskType("sleep", SleepInput, queue="default", expected_duration=1.0, handler=sleep),
    TaskType("record_run", RecordRunInput, queue="default", expected_duration=0.1, handler=record_run),
    TaskType("fail", FailInput, queue="default", expected_duration=0.01, handler=fail),
    TaskType("cpu", CpuInput, queue="cpu_intensive", expected_duration=1.0, handler=cpu),
    TaskType("allocate", AllocateInput, queue="cpu_intensive", expected_duration=1.0, handler=allocate),
    TaskType("crash_worker", CrashInput, queue="default", expected_duration=0.01, handler=crash_worker),
    TaskType(
        "gpu_hold", GpuHoldInput, queue="gpu_medium", expected_duration=0.5, handler=gpu_hold, gpu="slot"
    ),
    TaskType(
        "gpu_hold_whole",
        GpuHoldInput,
        queue="gpu_heavy",
        expected_duration=0.5,
        handler=gpu_hold,
        gpu="device",
    ),
    TaskType(
        "cuda_matmul",
        CudaMatmulInput,
        queue="gpu_medium",
        expected_duration=10.0,
        handler=cuda_matmul,
        gpu="slot",
    ),
]
