"""A Redis whose ACL refuses taskd's user a command it needs: the API answers 503 in the
documented shape (docs/production.md, "When start-up fails"), never a 500."""

from __future__ import annotations

import asyncio
import logging

import pytest
from faultkit import ValkeyServer, serving

from taskd.config import RedisConfig

PASSWORD = "acl-test-pw"


# All that taskd needs: a start with less is refused (tests/faults/test_start_failures.py).
FULL_GRANTS = "~* &* +@all"


@pytest.mark.parametrize(
    "revoked",
    [
        # The pub/sub channels (Valkey's default for a new user): refused inside the submit script.
        "resetchannels",
        # EVALSHA: refused the command itself (NOPERM).
        "-evalsha",
    ],
)
async def test_a_submit_a_redis_acl_refuses_answers_503_service_unavailable(tmp_path, revoked):
    # The ACL changed under a running taskd, past its start's check.
    server = await ValkeyServer(
        tmp_path / "valkey", None, f"user taskd on >{PASSWORD} {FULL_GRANTS}", password="admin"
    ).start()
    try:
        url = f"redis://taskd:{PASSWORD}@127.0.0.1:{server.port}/0"
        async with serving(tmp_path, RedisConfig(url=url), workers=False) as (_, api):
            async with server.client() as admin:
                await admin.execute_command("ACL", "SETUSER", "taskd", revoked)
            status, body = await api.call(
                "POST", "/api/v1/tasks/submit", json={"project_id": "p", "task_type": "noop", "task_data": {}}
            )
    finally:
        server.stop()

    assert status == 503
    assert body["error"] == "service_unavailable" and body["retry_after"] > 0
    assert "refuses this service a command" in body["message"]


async def test_a_worker_whose_user_lost_its_pub_sub_channels_tries_again_slowly_saying_why(tmp_path, caplog):
    server = await ValkeyServer(
        tmp_path / "valkey", None, f"user taskd on >{PASSWORD} {FULL_GRANTS}", password="admin"
    ).start()
    try:
        url = f"redis://taskd:{PASSWORD}@127.0.0.1:{server.port}/0"
        with caplog.at_level(logging.WARNING, logger="taskd.engine"):
            async with serving(tmp_path, RedisConfig(url=url), workers=True):
                # Valkey drops the listeners' connections; each SUBSCRIBE after is refused (NOPERM).
                async with server.client() as admin:
                    await admin.execute_command("ACL", "SETUSER", "taskd", "resetchannels")
                await asyncio.sleep(3)
    finally:
        server.stop()

    # Past the dropped connection's warning: one refusal per listener (every 10 s after it), not one
    # every 0.2 s.
    tries = [r for r in caplog.records if r.getMessage().startswith("pub/sub listener: Redis refuses")]
    assert tries
    assert all(r.levelno == logging.ERROR and "taskd's user" in r.getMessage() for r in tries)
    assert len(tries) <= 2
