"""What taskd serves to a browser, against a hostile tenant and a hostile web page.

The dashboard in headless Chromium: the key never goes into a URL, and a forgotten key leaves
nothing it was shown in the page.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chromium import CHROMIUM, Browser, enter_key, needs_chromium
from conftest import API_KEY

from taskd.config import AuthConfig, ScopedKey

TENANT_KEY = "tenant-a-key-0123456789"


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


@needs_chromium
async def test_in_chromium_forget_key_leaves_nothing_the_last_key_was_shown(start_service, tmp_path: Path):
    service = await start_service(
        auth=AuthConfig(api_keys=[API_KEY], keys=[ScopedKey(TENANT_KEY, ["tenant-a"])])
    )
    other = await service.submit("fail", {"message": "the other project's secret"}, project_id="tenant-b")
    await service.wait_terminal(other["task_id"])
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        # The operator looks at another tenant's task, forgets the key; the tenant enters theirs.
        await browser.navigate(f"{service.base_url}/dashboard?project=tenant-b")
        await enter_key(browser, API_KEY)
        await browser.wait_for(f"{row(other['task_id'])} !== null")
        await browser.evaluate(f"{row(other['task_id'])}.click(); true")
        await browser.wait_for(f"document.getElementById('detail-id').textContent === '{other['task_id']}'")
        await browser.evaluate("document.getElementById('forget-key').click(); true")
        left_after_forget = await browser.evaluate("document.body.textContent")
        await enter_key(browser, TENANT_KEY)
        await browser.wait_for("document.querySelectorAll('#workers tbody tr').length === 1")
        shown_to_tenant = await browser.evaluate("document.body.textContent")
    finally:
        await browser.close()

    for page in (left_after_forget, shown_to_tenant):
        assert "the other project's secret" not in page
        assert other["task_id"][:8] not in page


@needs_chromium
async def test_in_chromium_an_answer_that_comes_after_the_key_is_forgotten_is_not_shown(
    start_service, tmp_path: Path
):
    service = await start_service(
        auth=AuthConfig(api_keys=[API_KEY], keys=[ScopedKey(TENANT_KEY, ["tenant-a"])])
    )
    other = await service.submit("noop", {"note": "the other project's secret"}, project_id="tenant-b")
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await browser.navigate(f"{service.base_url}/dashboard")
        await enter_key(browser, API_KEY)
        await browser.hold_answers("*/api/v1/projects/tenant-b/tasks*")
        await browser.evaluate(
            "document.getElementById('project').value = 'tenant-b';"
            "document.getElementById('project-form').requestSubmit(); true"
        )
        # The list is asked for with the operator's key, which is forgotten before it comes.
        await browser.evaluate("document.getElementById('forget-key').click(); true")
        await browser.release_next()
        await enter_key(browser, TENANT_KEY)
        await browser.wait_for("document.querySelectorAll('#workers tbody tr').length === 1")
        shown_to_tenant = await browser.evaluate("document.body.textContent")
    finally:
        await browser.close()

    assert other["task_id"][:8] not in shown_to_tenant  # the list shows ids so far, the full id on hover


@needs_chromium
@pytest.mark.parametrize("path", ["/dashboard", "/docs"])
async def test_in_chromium_a_foreign_page_that_opened_the_dashboard_or_docs_keeps_no_handle_on_it(
    taskd, tmp_path: Path, path: str
):
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await browser.navigate("data:text/html,<title>elsewhere</title>")
        await browser.wait_for("document.title === 'elsewhere'")
        await browser.send(
            "Runtime.evaluate",
            expression=f"window.opened = window.open({json.dumps(taskd.base_url + path)})",
            userGesture=True,
        )
        # Cut off from its opener, the window looks closed to it: nothing to navigate later.
        await browser.wait_for("window.opened.closed")
    finally:
        await browser.close()
