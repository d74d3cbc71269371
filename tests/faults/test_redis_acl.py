"""A Redis whose ACL refuses taskd's user a command it needs: the API answers 503 in the
documented shape (docs/production.md, "When start-up fails"), never a 500."""

from __future__ import annotations

import pytest
from faultkit import ValkeyServer, serving

from taskd.config import RedisConfig

PASSWORD = "acl-test-pw"


@pytest.mark.parametrize(
    "grants",
    [
        # No pub/sub channels (Valkey's default for a new user): refused inside the submit script.
        "~* +@all",
        # No EVALSHA: refused the command itself (NOPERM).
        "~* &* +@all -evalsha",
    ],
)
async def test_a_submit_a_redis_acl_refuses_answers_503_service_unavailable(tmp_path, grants):
    server = await ValkeyServer(
        tmp_path / "valkey", None, f"user taskd on >{PASSWORD} {grants}", password="admin"
    ).start()
    try:
        url = f"redis://taskd:{PASSWORD}@127.0.0.1:{server.port}/0"
        async with serving(tmp_path, RedisConfig(url=url), workers=False) as (_, api):
            status, body = await api.call(
                "POST", "/api/v1/tasks/submit", json={"project_id": "p", "task_type": "noop", "task_data": {}}
            )
    finally:
        server.stop()

    assert status == 503
    assert body["error"] == "service_unavailable" and body["retry_after"] > 0
    assert "refuses this service a command" in body["message"]
