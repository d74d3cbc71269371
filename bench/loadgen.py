"""The HTTP load generator of bench/compare.py, run as its own process so it does not share a loop
with what it measures. Prints one JSON object on stdout.

    loadgen.py throughput URL --path P [--method POST --body JSON] --duration S --connections C
        as many requests as C keep-alive clients can send in S seconds: requests/s, p50/p99
    loadgen.py submit URL --count N --connections C [--projects P]
        exactly N submits (the benchmark's noop body) by C clients: the task ids and the start time;
        with P > 1 the n-th goes to project `bench_project_<n mod P>`

`wrk` (with a Lua body) is preferred for throughput when installed; this is the fallback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import API_KEY, SUBMIT_BODY, SUBMIT_PATH, percentile


def _session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    return aiohttp.ClientSession(connector=connector, headers=headers)


async def throughput(
    url: str, method: str, body: bytes | None, duration: float, connections: int
) -> dict[str, Any]:
    """Requests/s and latency of `connections` clients sending back to back for `duration` s."""
    latencies: list[float] = []
    non_2xx = 0
    errors = 0
    async with _session(connections) as session:
        started = time.perf_counter()
        deadline = started + duration

        async def client() -> None:
            nonlocal non_2xx, errors
            while (sent := time.perf_counter()) < deadline:
                try:
                    async with session.request(method, url, data=body) as response:
                        await response.read()
                        if not 200 <= response.status < 300:
                            non_2xx += 1
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)

        await asyncio.gather(*(client() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return {
        "generator": "aiohttp",
        "requests": len(latencies),
        "elapsed": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "non_2xx": non_2xx,
        "errors": errors,
    }


async def submit(url: str, count: int, connections: int, projects: int = 1) -> dict[str, Any]:
    """Submit exactly `count` noop tasks from `connections` clients, over `projects` projects; the
    ids and when the first was sent."""
    bodies = (
        [orjson.dumps(SUBMIT_BODY)]
        if projects <= 1
        else [orjson.dumps({**SUBMIT_BODY, "project_id": f"bench_project_{n}"}) for n in range(projects)]
    )
    ids: list[str] = []
    refused: list[str] = []
    remaining = count
    async with _session(connections) as session:
        started = time.time()

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                body = bodies[remaining % len(bodies)]
                async with session.post(url + SUBMIT_PATH, data=body) as response:
                    answer = await response.read()
                    if response.status == 200:
                        ids.append(orjson.loads(answer)["task_id"])
                    else:
                        refused.append(f"{response.status} {answer[:200]!r}")

        await asyncio.gather(*(client() for _ in range(connections)))
        finished = time.time()
    return {"started": started, "submitted": finished, "task_ids": ids, "refused": refused}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("throughput", "submit"))
    parser.add_argument("url")
    parser.add_argument("--path", default=SUBMIT_PATH)
    parser.add_argument("--method", default="POST")
    parser.add_argument("--body", help="JSON body (default: the benchmark's submit body; none for GET)")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument(
        "--projects", type=int, default=1, help="submit: spread the tasks over this many projects"
    )
    parser.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    if args.mode == "submit":
        result = run(submit(args.url, args.count, args.connections, args.projects))
    else:
        body = None if args.method == "GET" else (args.body or orjson.dumps(SUBMIT_BODY).decode()).encode()
        result = run(throughput(args.url + args.path, args.method, body, args.duration, args.connections))
    if args.out:
        args.out.write_bytes(orjson.dumps(result))
    else:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
