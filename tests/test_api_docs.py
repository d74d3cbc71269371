"""`/docs`: Swagger UI over `/openapi.json`, served offline from installed packages, no key."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest
from chromium import Browser, find_chromium

CHROMIUM = find_chromium()


async def anonymous(service, path):
    async with aiohttp.ClientSession(service.base_url) as session, session.get(path) as response:
        return response.status, response.content_type, response.headers, await response.read()


async def test_the_page_is_served_without_a_key_and_names_only_files_of_this_server(start_service):
    service = await start_service(workers=False)

    status, content_type, headers, body = await anonymous(service, "/docs")
    html = body.decode()
    linked = re.findall(r'(?:src|href)="([^"]+)"', html)

    assert (status, content_type) == (200, "text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert linked and all(url.startswith("/docs/") for url in linked), linked
    assert "//" not in html


async def test_every_file_the_page_loads_is_served(start_service):
    service = await start_service(workers=False)
    _, _, _, page = await anonymous(service, "/docs")

    answers = {
        url: (status, len(body))
        for url in re.findall(r'(?:src|href)="([^"]+)"', page.decode())
        for status, _, _, body in [await anonymous(service, url)]
    }

    assert {status for status, _ in answers.values()} == {200}
    assert all(size > 0 for _, size in answers.values())
    assert answers.keys() >= {"/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/taskd-docs.js"}


async def test_the_start_script_loads_this_servers_document_and_no_validator(start_service):
    service = await start_service(workers=False)

    _, content_type, _, body = await anonymous(service, "/docs/taskd-docs.js")
    script = body.decode()

    assert content_type in {"application/javascript", "text/javascript"}
    assert 'url: "/openapi.json"' in script
    assert "validatorUrl: null" in script
    assert "http" not in script  # no absolute URL


async def test_a_file_the_page_does_not_load_is_404_in_the_error_shape(start_service):
    service = await start_service(workers=False)

    status, _, _, body = await anonymous(service, "/docs/swagger-initializer.js")

    assert status == 404
    assert b'"error":"not_found"' in body


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install chromium); it renders /docs",
)
async def test_in_chromium_the_page_renders_every_operation_from_this_server_alone(
    start_service, tmp_path: Path
):
    service = await start_service(workers=False)
    async with service.client.get("/openapi.json") as response:
        document = await response.json()
    operations = sum(len(item) for item in document["paths"].values())
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await browser.navigate(f"{service.base_url}/docs")
        shown = await browser.wait_for(
            f"document.querySelectorAll('.opblock').length >= {operations} && "
            "document.querySelectorAll('.opblock').length"
        )
        title = await browser.evaluate("document.querySelector('.info .title').textContent")
        loaded = await browser.evaluate(
            "performance.getEntriesByType('resource').map(entry => entry.name).concat([location.href])"
        )
    finally:
        await browser.close()

    assert shown == operations
    assert title.startswith("taskd")
    assert all(url.startswith(service.base_url + "/") for url in loaded), loaded
    assert browser.exceptions == []
