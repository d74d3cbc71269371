"""Headless Chromium driven over the DevTools protocol with aiohttp's websocket client (no extra dependency)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1400,1000",
    "--remote-debugging-port=0",
]


def find_chromium() -> str | None:
    """The Chromium binary (Debian's `chromium` package), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with one page; `exceptions` collects uncaught page errors, `requests`
    the URL of every request the page made (fetches, streams, scripts)."""

    def __init__(self, proc: asyncio.subprocess.Process, session: aiohttp.ClientSession) -> None:
        self.proc = proc
        self.session = session
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.exceptions: list[str] = []
        self.requests: list[str] = []
        self._held: asyncio.Queue[str] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, binary: str, profile: Path) -> Browser:
        """Start Chromium with a fresh profile and attach to its first page."""
        profile.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        browser = cls(proc, aiohttp.ClientSession())
        try:
            await browser._attach(profile / "DevToolsActivePort")
        except BaseException:
            await browser.close()
            raise
        return browser

    async def _attach(self, port_file: Path) -> None:
        async with asyncio.timeout(30):
            while not port_file.exists() or not port_file.read_text().strip():
                if self.proc.returncode is not None:
                    raise RuntimeError(f"chromium exited with {self.proc.returncode}")
                await asyncio.sleep(0.05)
            port = port_file.read_text().split()[0]
            while True:
                async with self.session.get(f"http://127.0.0.1:{port}/json/list") as response:
                    pages = [t for t in await response.json() if t["type"] == "page"]
                if pages:
                    break
                await asyncio.sleep(0.05)
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        await self.send("Network.enable")

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data and data["id"] in self._waiting:
                future = self._waiting.pop(data["id"])
                if not future.done():
                    future.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.exceptions.append(details.get("exception", {}).get("description") or details.get("text"))
            elif data.get("method") == "Network.requestWillBeSent":
                self.requests.append(data["params"]["request"]["url"])
            elif data.get("method") == "Fetch.requestPaused":
                self._held.put_nowait(data["params"]["requestId"])

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result."""
        assert self.ws is not None
        message_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        await self.ws.send_str(json.dumps({"id": message_id, "method": method, "params": params}))
        async with asyncio.timeout(30):
            reply = await future
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15) -> Any:
        """Evaluate `expression` until it is truthy; its value."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    with contextlib.suppress(RuntimeError):  # e.g. the page is navigating
                        value = await self.evaluate(expression)
                        if value:
                            return value
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"never true in the page: {expression}") from None

    async def hold_answers(self, url_pattern: str) -> None:
        """Hold the answer to each request whose URL matches `url_pattern` (a DevTools glob, `*`
        for any text) before the page sees it, until `release_next` lets it through."""
        await self.send("Fetch.enable", patterns=[{"urlPattern": url_pattern, "requestStage": "Response"}])

    async def release_next(self) -> None:
        """Wait for an answer `hold_answers` holds, hand it to the page, and hold no more."""
        async with asyncio.timeout(15):
            request_id = await self._held.get()
        await self.send("Fetch.continueRequest", requestId=request_id)
        await self.send("Fetch.disable")

    async def navigate(self, url: str) -> None:
        """Load `url`."""
        await self.send("Page.navigate", url=url)

    async def screenshot(self, path: Path) -> None:
        """Save a PNG of the page."""
        result = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))

    async def close(self) -> None:
        """Close the connection and stop Chromium."""
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.session.close()
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install chromium); it drives the dashboard",
)


async def enter_key(browser: Browser, key: str) -> None:
    """Give the dashboard's key form `key`, once the page asks for one."""
    await browser.wait_for("!document.getElementById('key-panel').hidden")
    await browser.evaluate(
        f"document.getElementById('api-key').value = {json.dumps(key)};"
        "document.getElementById('key-form').requestSubmit(); true"
    )


async def open_live(browser: Browser, base_url: str, project: str, key: str) -> None:
    """Open the dashboard on `project`, give it `key`, and wait until its list is live."""
    await browser.navigate(f"{base_url}/dashboard?project={project}")
    await enter_key(browser, key)
    await browser.wait_for("document.getElementById('live').textContent === 'live'")


def row(task_id: str) -> str:
    """A JavaScript expression for the dashboard list's row of `task_id` (null while not listed)."""
    return f"document.querySelector('#tasks tr[data-task-id=\"{task_id}\"]')"
