"""What taskd serves to a browser, against a hostile tenant and a hostile web page.

The dashboard in headless Chromium: tenant-written strings are shown as text, the key never goes
into a URL, a forgotten key leaves nothing it was shown in the page, and a foreign page that opened
it keeps no handle on it. Over HTTP: a foreign origin is given no CORS answer, and the pages carry
their framing and referrer headers. The model: docs/security.md, "Browsers".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from chromium import CHROMIUM, Browser, enter_key, needs_chromium, open_live, row
from conftest import API_KEY

from taskd.config import AuthConfig, ScopedKey, WebhooksConfig

TENANT_KEY = "tenant-a-key-0123456789"
# Markup in every place a tenant writes: any element it makes in the page, or a run of its code,
# would mean a value went in as HTML. The CSP would stop the handlers running; the element count
# does not depend on it.
HOSTILE = (
    '"><img src=x onerror="window.pwned=1"><svg onload="window.pwned=2"></svg>'
    "<script>window.pwned=3</script></pre><iframe src=javascript:window.pwned=4></iframe>"
)
# Counts every such element put into the page from then on, even one replaced a moment later.
WATCH_FOR_MARKUP = """
window.madeByMarkup = 0;
new MutationObserver((records) => {
  for (const record of records) {
    for (const node of record.addedNodes) {
      const tags = "img, svg, script, iframe";
      if (node.nodeType === 1 && (node.matches(tags) || node.querySelector(tags))) window.madeByMarkup += 1;
    }
  }
}).observe(document.body, { childList: true, subtree: true });
true
"""


@needs_chromium
async def test_in_chromium_the_dashboard_never_puts_the_key_in_a_url(taskd, tmp_path: Path):
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await open_live(browser, taskd.base_url, "proj-1", API_KEY)
        task = await taskd.submit("sleep", {"seconds": 3, "steps": 6})
        # Only the event stream moves a listed task's progress: it is live, with the key sent.
        await browser.wait_for(f"{row(task['task_id'])}?.querySelector('progress').value > 0")
        requests = list(browser.requests)
    finally:
        await browser.close()

    assert [url for url in requests if API_KEY in url] == []
    assert any(url.endswith("/api/v1/projects/proj-1/events") for url in requests)


async def _read_in_the_page(taskd, tmp_path: Path, chunks: list[str]) -> dict[str, Any]:
    """What the dashboard's event reader (readEvents) makes of a body arriving in `chunks`: the
    events it applied (type and data) and the list reloads it asked (`["reload", None]`), and its
    stream's state (lastId, retryMs) after the body ends."""
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await browser.navigate(f"{taskd.base_url}/dashboard")
        await browser.wait_for("!document.getElementById('key-panel').hidden")
        return await browser.evaluate(
            f"""(async () => {{
              const seen = [];
              applyEvent = (event) => seen.push([event.type, JSON.parse(event.data)]);
              reloadSoon = () => seen.push(["reload", null]);
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
    read = await _read_in_the_page(taskd, tmp_path, chunks)

    assert read == {
        "seen": [
            ["progress", {"task_id": "a", "n": 1}],
            ["status", {"task_id": "b", "n": 2}],
            ["status", {"task_id": "d"}],
        ],
        "stream": {"lastId": "6-0", "retryMs": 7000},
    }


@needs_chromium
async def test_in_chromium_a_stream_cut_inside_an_event_resumes_from_the_last_complete_one(
    taskd, tmp_path: Path
):
    # The connection drops after the second event's id and part of its data: Last-Event-ID must
    # name the first, so that the reconnect is sent the second again instead of skipping it.
    chunks = [
        'id: 5-0\nevent: status\ndata: {"task_id": "a"}\n\n',
        'id: 6-0\nevent: status\ndata: {"task_',
    ]
    read = await _read_in_the_page(taskd, tmp_path, chunks)

    assert read["seen"] == [["status", {"task_id": "a"}]]
    assert read["stream"]["lastId"] == "5-0"


@needs_chromium
async def test_in_chromium_a_gap_in_the_projects_event_stream_makes_the_dashboard_list_its_tasks_again(
    taskd, tmp_path: Path
):
    chunks = [
        'event: gap\ndata: {"type": "gap", "after": "5-0", "kept_from": "9-0"}\n\n',
        'id: 9-0\nevent: status\ndata: {"task_id": "a"}\n\n',
    ]
    read = await _read_in_the_page(taskd, tmp_path, chunks)

    assert read["seen"] == [["reload", None], ["status", {"task_id": "a"}]]
    assert read["stream"]["lastId"] == "9-0"


@needs_chromium
async def test_in_chromium_the_reconnect_after_a_stream_waits_the_retry_that_stream_sent(
    taskd, tmp_path: Path
):
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await browser.navigate(f"{taskd.base_url}/dashboard")
        await browser.wait_for("!document.getElementById('key-panel').hidden")
        # The stream says `retry: 7000` and ends; the reconnect is the last request (aborted).
        waits = await browser.evaluate(
            """(async () => {
              const controller = new AbortController();
              const waits = [];
              let asked = 0;
              window.fetch = async () => {
                asked += 1;
                if (asked > 1) { controller.abort(); throw new DOMException("stopped", "AbortError"); }
                return new Response("retry: 7000\\n\\n", { headers: { "Content-Type": "text/event-stream" } });
              };
              window.setTimeout = (resolve, ms) => { waits.push(ms); resolve(); return 0; };
              await followEvents("/api/v1/projects/p/events", controller.signal).catch(() => {});
              return waits;
            })()"""
        )
    finally:
        await browser.close()

    assert waits == [7000]


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
async def test_in_chromium_a_list_reload_due_when_the_key_is_forgotten_is_not_made(taskd, tmp_path: Path):
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await open_live(browser, taskd.base_url, "proj-1", API_KEY)
        # A live event about a task not listed yet asks for the list again a moment later; the key
        # is forgotten in that moment. The reload's 300 ms are long past when the page is read.
        left = await browser.evaluate(
            """(async () => {
              reloadSoon();
              document.getElementById('forget-key').click();
              const asked = [];
              const fetched = window.fetch;
              window.fetch = (path, options) => { asked.push(String(path)); return fetched(path, options); };
              await new Promise((resolve) => setTimeout(resolve, 2000));
              const error = document.getElementById('key-error');
              return { asked, error: error.hidden ? "" : error.textContent };
            })()"""
        )
    finally:
        await browser.close()

    assert left == {"asked": [], "error": ""}


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


@needs_chromium
async def test_in_chromium_tenant_strings_are_shown_as_text_in_the_list_the_detail_and_live_events(
    start_service, tmp_path: Path
):
    service = await start_service(webhooks=WebhooksConfig(allow_private=True))
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await browser.navigate(f"{service.base_url}/dashboard?project=proj-1")
        await enter_key(browser, API_KEY)
        await browser.evaluate(WATCH_FOR_MARKUP)
        await browser.wait_for("document.getElementById('live').textContent === 'live'")
        # Submitted while the page watches, so that they reach it as live events too: an error, an
        # error of a first attempt (the detail's `last error`), a step a task reports and stays at.
        failed = await service.submit("fail", {"message": HOSTILE})
        retried = await service.submit(
            "fail",
            {"message": HOSTILE, "transient": True, "fail_times": 1},
            metadata={"note": HOSTILE},
            callback_url="http://127.0.0.1:9/hook?x=" + HOSTILE.replace(" ", "%20").replace('"', "%22"),
        )
        await service.wait_terminal(failed["task_id"])
        await service.wait_terminal(retried["task_id"])
        stepping = await service.submit("report_step", {"step": HOSTILE})
        await service.wait_for(stepping["task_id"], lambda body: body["current_step"] == HOSTILE)
        shown = {}
        for task, field in (
            (stepping, "#detail-fields dd[data-field=progress]"),
            (failed, "#detail-error"),
            (retried, '#detail-fields dd[data-field="last error"]'),
        ):
            await browser.wait_for(f"{row(task['task_id'])} !== null")
            await browser.evaluate(f"{row(task['task_id'])}.click(); true")
            shown_in = f"document.querySelector({json.dumps(field)})"
            await browser.wait_for(
                f"document.getElementById('detail-id').textContent === '{task['task_id']}'"
                f" && {shown_in}?.textContent"
            )
            shown[field] = await browser.evaluate(f"{shown_in}.textContent")
        data = await browser.evaluate("JSON.parse(document.getElementById('detail-data').textContent)")
        made, pwned = await browser.evaluate("[window.madeByMarkup, window.pwned ?? null]")
        exceptions = browser.exceptions
    finally:
        await browser.close()

    assert list(shown.values()) == [f"50 % {HOSTILE}", HOSTILE, HOSTILE]
    assert data == {"message": HOSTILE, "transient": True, "fail_times": 1}
    assert (made, pwned) == (0, None)
    assert exceptions == []


async def test_a_foreign_origin_gets_no_cors_answer_so_its_page_can_read_nothing(taskd):
    foreign = {"Origin": "https://attacker.example"}
    async with aiohttp.ClientSession(taskd.base_url) as page:
        async with page.options(
            "/api/v1/tasks/submit",
            headers={
                **foreign,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key",
            },
        ) as preflight:
            preflight_headers = preflight.headers
        async with page.get("/api/v1/tasks/health", headers={**foreign, "X-API-Key": API_KEY}) as read:
            read_headers = read.headers

    assert preflight.status >= 400
    for headers in (preflight_headers, read_headers):
        assert not [name for name in headers if name.lower().startswith("access-control-")]


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/dashboard.js", "/docs", "/docs/taskd-docs.js"])
async def test_the_pages_cannot_be_framed_and_send_no_referrer(taskd, path):
    async with aiohttp.ClientSession(taskd.base_url) as anonymous, anonymous.get(path) as response:
        headers = response.headers

    assert response.status == 200
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in headers["Content-Security-Policy"].split("script-src", 1)[1].split(";")[0]
    assert (headers["X-Frame-Options"], headers["Referrer-Policy"], headers["X-Content-Type-Options"]) == (
        "DENY",
        "no-referrer",
        "nosniff",
    )
