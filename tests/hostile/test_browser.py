"""What taskd serves to a browser, against a hostile tenant and a hostile web page.

The dashboard in headless Chromium: the key never goes into a URL.
"""

from __future__ import annotations

import json
from pathlib import Path

from chromium import CHROMIUM, Browser, enter_key, needs_chromium
from conftest import API_KEY


def row(task_id: str) -> str:
    return f"document.querySelector('#tasks tr[data-task-id=\"{task_id}\"]')"


@needs_chromium
async def test_in_chromium_the_dashboard_never_puts_the_key_in_a_url(taskd, tmp_path: Path):
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await browser.navigate(f"{taskd.base_url}/dashboard?project=proj-1")
        await enter_key(browser, API_KEY)
        await browser.wait_for("document.getElementById('live').textContent === 'live'")
        task = await taskd.submit("sleep", {"seconds": 3, "steps": 6})
        # Only the event stream moves a listed task's progress: it is live, with the key sent.
        await browser.wait_for(f"{row(task['task_id'])}?.querySelector('progress').value > 0")
        requests = list(browser.requests)
    finally:
        await browser.close()

    assert [url for url in requests if API_KEY in url] == []
    assert any(url.endswith("/api/v1/projects/proj-1/events") for url in requests)


@needs_chromium
async def test_in_chromium_the_event_reader_parses_server_sent_events_split_anywhere(taskd, tmp_path: Path):
    # The chunks cut a CRLF in two, a data line in two, and carry a comment, a retry and an
    # unnamed event (which taskd never sends and the page does not take).
    chunks = [
        'id: 5-0\r\nevent: progress\r\ndata: {"task_id": "a",',
        ' "n": 1}\r',
        '\n\r\n: keep-alive\n\nretry: 7000\nevent: status\ndata: {"task_id": "b",\ndata: "n": 2}\n\n',
        'data: {"task_id": "c"}\n\nid: 6-0\nevent: status\ndata: {"task_id": "d"}\n\n',
    ]
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await browser.navigate(f"{taskd.base_url}/dashboard")
        await browser.wait_for("!document.getElementById('key-panel').hidden")
        seen = await browser.evaluate(
            f"""(async () => {{
              const seen = [];
              applyEvent = (event) => seen.push([event.type, JSON.parse(event.data)]);
              const chunks = {json.dumps(chunks)};
              const body = new ReadableStream({{
                start(controller) {{
                  for (const chunk of chunks) controller.enqueue(new TextEncoder().encode(chunk));
                  controller.close();
                }},
              }});
              const stream = {{ lastId: "", retryMs: 3000 }};
              await readEvents(body, stream);
              return {{ seen, stream }};
            }})()"""
        )
    finally:
        await browser.close()

    assert seen == {
        "seen": [
            ["progress", {"task_id": "a", "n": 1}],
            ["status", {"task_id": "b", "n": 2}],
            ["status", {"task_id": "d"}],
        ],
        "stream": {"lastId": "6-0", "retryMs": 7000},
    }
