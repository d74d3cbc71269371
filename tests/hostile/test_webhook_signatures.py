"""Webhook signatures as a tenant's receiver sees them, checked with `standardwebhooks` as the oracle.

Every webhook is signed (by a secret taskd makes when none is configured); a task is signed with the
secret of the API key that submitted it, so no other tenant's receiver can verify or forge it; during
a rotation the old and the new secret both verify the same delivery.
"""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import API_KEY, RunningService, child_env
from standardwebhooks import Webhook, WebhookVerificationError
from test_cli_admin import operator_cli
from webhook_receiver import Received, documented_verified, documented_verify

from taskd import keys
from taskd.config import AuthConfig, ConfigError, ScopedKey, WebhooksConfig, load_config
from taskd.webhooks.signing import SECRET_FILE, load_or_create_secret, secret_id, secret_key, signature


def whsec(seed: bytes) -> str:
    """A Standard Webhooks secret made from 32 bytes of `seed`."""
    return "whsec_" + base64.b64encode(seed.ljust(32, b"!")[:32]).decode()


GLOBAL = whsec(b"operator-global-secret")
OLD_GLOBAL = whsec(b"operator-old-global-secret")
TENANT_A, TENANT_B = "tenant-a-key-4f1e2d3c", "tenant-b-key-9a8b7c6d"
SECRET_A, SECRET_B = whsec(b"tenant-a-secret"), whsec(b"tenant-b-secret")
OLD_SECRET_A = whsec(b"tenant-a-old-secret")


def verifies(secret: str, request: Received) -> bool:
    """True if the receiver holding `secret` accepts the request (standardwebhooks' own check)."""
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


@pytest.fixture
def start(start_service) -> Callable[..., Any]:
    """Start taskd with tenants A and B (each with its own webhook secret) next to the default key."""

    async def start_with(**webhooks: Any) -> RunningService:
        tenants = [
            ScopedKey(TENANT_A, webhook_secret=SECRET_A),
            ScopedKey(TENANT_B, webhook_secret=SECRET_B),
        ]
        return await start_service(
            auth=AuthConfig(api_keys=[API_KEY], keys=tenants),
            webhooks=WebhooksConfig(allow_private=True, **webhooks),
        )

    return start_with


async def submit_as(
    service: RunningService, api_key: str, callback_url: str, task_type: str = "noop", **task_data: Any
) -> str:
    """Submit a task with `api_key`; its id."""
    body = {
        "project_id": "proj-1",
        "task_type": task_type,
        "task_data": task_data,
        "callback_url": callback_url,
    }
    headers = {"X-API-Key": api_key}
    async with (
        aiohttp.ClientSession(base_url=service.base_url, headers=headers) as client,
        client.post("/api/v1/tasks/submit", json=body) as response,
    ):
        assert response.status == 200, await response.text()
        return (await response.json())["task_id"]


async def test_without_a_configured_secret_taskd_makes_one_readable_by_its_owner_only(
    start_service, tmp_path
):
    service = await start_service(webhooks=WebhooksConfig(allow_private=True))

    made = Path(tmp_path / "data" / SECRET_FILE)

    assert service.service.webhook_secret_file == made
    assert stat.S_IMODE(made.stat().st_mode) == 0o600


async def test_without_a_configured_secret_every_webhook_verifies_with_the_made_one(
    start_service, receiver, tmp_path
):
    service = await start_service(webhooks=WebhooksConfig(allow_private=True))
    await submit_as(service, API_KEY, receiver.url())

    (request,) = await receiver.wait_for(1)

    assert verifies((tmp_path / "data" / SECRET_FILE).read_text().strip(), request)


async def test_a_tenants_task_verifies_with_that_tenants_secret(start, receiver):
    service = await start(secret=GLOBAL)
    await submit_as(service, TENANT_A, receiver.url())

    (request,) = await receiver.wait_for(1)

    assert verifies(SECRET_A, request)


@pytest.mark.parametrize("other", [SECRET_B, GLOBAL], ids=["other-tenant", "global"])
async def test_a_tenants_task_fails_verification_with_any_other_secret(start, receiver, other):
    service = await start(secret=GLOBAL)
    await submit_as(service, TENANT_A, receiver.url())

    (request,) = await receiver.wait_for(1)

    assert not verifies(other, request)


async def test_a_key_without_its_own_secret_signs_with_the_global_one_only(start, receiver):
    service = await start(secret=GLOBAL)
    await submit_as(service, API_KEY, receiver.url())

    (request,) = await receiver.wait_for(1)

    assert (verifies(GLOBAL, request), verifies(SECRET_A, request), verifies(SECRET_B, request)) == (
        True,
        False,
        False,
    )


async def test_during_a_global_rotation_the_old_and_the_new_secret_both_verify(start, receiver):
    service = await start(secret=GLOBAL, previous_secret=OLD_GLOBAL)
    await submit_as(service, API_KEY, receiver.url())

    (request,) = await receiver.wait_for(1)

    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verifies(GLOBAL, request) and verifies(OLD_GLOBAL, request)


async def test_during_a_tenants_rotation_its_old_and_new_secret_both_verify(start_service, receiver):
    rotating = ScopedKey(TENANT_A, webhook_secret=SECRET_A, previous_webhook_secret=OLD_SECRET_A)
    service = await start_service(
        auth=AuthConfig(api_keys=[API_KEY], keys=[rotating]),
        webhooks=WebhooksConfig(allow_private=True, secret=GLOBAL),
    )
    await submit_as(service, TENANT_A, receiver.url())

    (request,) = await receiver.wait_for(1)

    assert verifies(SECRET_A, request) and verifies(OLD_SECRET_A, request)
    assert not verifies(GLOBAL, request)


async def test_a_redelivery_is_signed_with_the_submitting_tenants_secret(start, receiver):
    service = await start(secret=GLOBAL)
    task_id = await submit_as(service, TENANT_A, receiver.url())
    await receiver.wait_for(1)
    await service.wait_for(task_id, lambda body: body["webhook"]["delivered_at"] is not None)

    async with service.client.post(f"/api/v1/tasks/{task_id}/webhook/redeliver") as response:
        assert response.status == 202, await response.text()
    _, redelivered = await receiver.wait_for(2)

    assert verifies(SECRET_A, redelivered)
    assert not verifies(GLOBAL, redelivered)


async def test_a_retry_by_another_key_stays_signed_with_the_original_submitters_secret(start, receiver):
    service = await start(secret=GLOBAL)
    task_id = await submit_as(service, TENANT_A, receiver.url(), task_type="fail")
    await receiver.wait_for(1)

    async with service.client.post(f"/api/v1/tasks/{task_id}/retry") as response:
        assert response.status == 200, await response.text()
    _, retried = await receiver.wait_for(2)

    assert retried.json["task_id"] != task_id
    assert verifies(SECRET_A, retried)


async def _submitted_then_restarted(
    start_service, receiver, then: list[ScopedKey]
) -> tuple[RunningService, str]:
    """A task of tenant A (with its own secret) submitted to an API node that then stops, and a
    node of the next configuration (`then` for auth.keys) that runs it: a key's removal or rotation."""
    webhooks = WebhooksConfig(allow_private=True, secret=GLOBAL)
    before = await start_service(
        workers=False,
        auth=AuthConfig(api_keys=[API_KEY], keys=[ScopedKey(TENANT_A, webhook_secret=SECRET_A)]),
        webhooks=webhooks,
    )
    task_id = await submit_as(before, TENANT_A, receiver.url())
    await before.service.stop(grace=1)
    after = await start_service(auth=AuthConfig(api_keys=[API_KEY], keys=then), webhooks=webhooks)
    return after, task_id


async def test_a_removed_keys_task_is_never_signed_with_the_global_secret(start_service, receiver):
    service, task_id = await _submitted_then_restarted(start_service, receiver, then=[])

    body = await service.wait_for(task_id, lambda body: (body.get("webhook") or {}).get("attempts"))

    assert receiver.received == []
    assert "no longer configured" in body["webhook"]["last_error"]


async def test_a_key_rotated_to_a_new_key_with_its_secret_kept_signs_its_old_tasks_with_that_secret(
    start_service, receiver
):
    rotated = ScopedKey("tenant-a-new-key-0b1c2d3e", webhook_secret=SECRET_A)
    await _submitted_then_restarted(start_service, receiver, then=[rotated])

    (request,) = await receiver.wait_for(1)

    assert verifies(SECRET_A, request)
    assert not verifies(GLOBAL, request)


async def test_retry_failed_gives_a_retry_of_a_record_from_before_secret_ids_its_keys_secret_id(
    start, receiver, redis, valkey_url
):
    # As a retry through the API does: once the key is rotated away, the retry is signed with that
    # secret (or not sent), never with the global one.
    service = await start(secret=GLOBAL)
    task_id = await submit_as(service, TENANT_A, receiver.url(), task_type="fail")
    await receiver.wait_for(1)
    await redis.hdel(keys.task(task_id), "webhook_secret_id")
    tenants = [{"key": TENANT_A, "webhook_secret": SECRET_A}, {"key": TENANT_B, "webhook_secret": SECRET_B}]

    run = await operator_cli(
        "retry-failed",
        "--project",
        "proj-1",
        redis_url=valkey_url,
        TASKD_AUTH__API_KEYS=API_KEY,
        TASKD_AUTH__KEYS=json.dumps(tenants),
    )

    assert run.code == 0, run.err
    (retried,) = (line.split(" -> ")[1] for line in run.out.splitlines())
    assert await redis.hget(keys.task(retried), "webhook_secret_id") == secret_id(SECRET_A).encode()


# A receiver that copied docs/webhooks.md's example, faced with what anyone who finds its URL can send.
DOCUMENTED_VERIFY = documented_verify()


async def test_the_documented_verify_accepts_a_tenants_genuine_delivery_and_no_other_secret(start, receiver):
    service = await start(secret=GLOBAL)
    await submit_as(service, TENANT_A, receiver.url())

    (request,) = await receiver.wait_for(1)

    assert [
        DOCUMENTED_VERIFY(secret, request.headers, request.body) for secret in (SECRET_A, SECRET_B, GLOBAL)
    ] == [
        True,
        False,
        False,
    ]


async def test_the_documented_verify_accepts_either_secret_of_a_rotation(start_service, receiver):
    tenant = ScopedKey(TENANT_A, webhook_secret=SECRET_A, previous_webhook_secret=OLD_SECRET_A)
    service = await start_service(
        auth=AuthConfig(api_keys=[API_KEY], keys=[tenant]), webhooks=WebhooksConfig(allow_private=True)
    )
    await submit_as(service, TENANT_A, receiver.url())

    (request,) = await receiver.wait_for(1)

    assert DOCUMENTED_VERIFY(SECRET_A, request.headers, request.body)
    assert DOCUMENTED_VERIFY(OLD_SECRET_A, request.headers, request.body)


def _forged(headers: dict[str, str], **changed: str | None) -> dict[str, str]:
    """`headers` with `changed` (underscores for dashes) set, or left out where None."""
    forged = dict(headers)
    for name, value in changed.items():
        forged.pop(name.replace("_", "-"))
        if value is not None:
            forged[name.replace("_", "-")] = value
    return forged


@pytest.mark.parametrize(
    "changed",
    [
        {"webhook_signature": None},
        {"webhook_id": None},
        {"webhook_timestamp": None},
        {"webhook_timestamp": "soon"},
        {"webhook_timestamp": "9" * 5000},  # past int()'s 4,300 digits: a ValueError
        {"webhook_timestamp": "\uff11\uff17\uff19\uff16"},  # digits int() reads, outside ASCII
        {"webhook_signature": "v1,\u00e9"},  # compare_digest refuses a str outside ASCII
        {"webhook_signature": "v1,\udcff"},  # a byte past ASCII as aiohttp decodes a header
        {"webhook_id": "msg_\udcff"},
    ],
    ids=[
        "no-signature",
        "no-id",
        "no-timestamp",
        "timestamp-not-a-number",
        "timestamp-5000-digits",
        "timestamp-fullwidth-digits",
        "signature-non-ascii",
        "signature-undecodable-byte",
        "id-undecodable-byte",
    ],
)
async def test_the_documented_verify_refuses_malformed_headers_without_raising(start, receiver, changed):
    service = await start(secret=GLOBAL)
    await submit_as(service, TENANT_A, receiver.url())

    (request,) = await receiver.wait_for(1)

    assert DOCUMENTED_VERIFY(SECRET_A, _forged(request.headers, **changed), request.body) is False


async def test_the_documented_verify_refuses_a_signature_without_its_version(start, receiver):
    service = await start(secret=GLOBAL)
    await submit_as(service, TENANT_A, receiver.url())

    (request,) = await receiver.wait_for(1)
    unversioned = request.headers["webhook-signature"].removeprefix("v1,")

    assert not DOCUMENTED_VERIFY(
        SECRET_A, _forged(request.headers, webhook_signature=unversioned), request.body
    )


async def test_the_documented_verify_refuses_a_genuine_delivery_replayed_after_five_minutes(start, receiver):
    service = await start(secret=GLOBAL)
    await submit_as(service, TENANT_A, receiver.url())

    (request,) = await receiver.wait_for(1)
    # The delivery as taskd would have signed it 301 s earlier: a capture replayed now.
    then = int(request.headers["webhook-timestamp"]) - 301
    replayed = _forged(
        request.headers,
        webhook_timestamp=str(then),
        webhook_signature=signature(secret_key(SECRET_A), request.headers["webhook-id"], then, request.body),
    )

    assert not DOCUMENTED_VERIFY(SECRET_A, replayed, request.body)


async def test_the_documented_standardwebhooks_check_returns_a_genuine_deliverys_payload(start, receiver):
    service = await start(secret=GLOBAL)
    await submit_as(service, TENANT_A, receiver.url())

    (request,) = await receiver.wait_for(1)

    assert documented_verified(SECRET_A)(request.body, request.headers) == request.json
    assert documented_verified(SECRET_B)(request.body, request.headers) is None


@pytest.mark.parametrize("header", ["webhook-signature", "webhook-id"])
async def test_the_documented_standardwebhooks_check_refuses_a_header_byte_past_ascii_without_raising(
    start, receiver, header
):
    service = await start(secret=GLOBAL)
    await submit_as(service, TENANT_A, receiver.url())

    (request,) = await receiver.wait_for(1)
    # A byte 0xff, as aiohttp decodes it: the library's own encode() raises UnicodeEncodeError.
    forged = {**request.headers, header: request.headers[header] + "\udcff"}

    assert documented_verified(SECRET_A)(request.body, forged) is None


@pytest.mark.parametrize(
    ("signature", "body"),
    [("garbage", None), ("v1,A", None), (None, b"\xff" * 8)],
    ids=["signature-without-version", "signature-broken-base64", "body-not-utf8"],
)
async def test_the_documented_standardwebhooks_check_refuses_plain_malformed_requests_without_raising(
    start, receiver, signature, body
):
    service = await start(secret=GLOBAL)
    await submit_as(service, TENANT_A, receiver.url())

    (request,) = await receiver.wait_for(1)
    # ASCII anyone can send: standardwebhooks 1.1 raises ValueError, binascii.Error and
    # UnicodeDecodeError for them, not WebhookVerificationError (security.md).
    forged = request.headers if signature is None else {**request.headers, "webhook-signature": signature}

    assert documented_verified(SECRET_A)(body or request.body, forged) is None


async def test_a_start_warns_of_each_tenant_key_without_a_webhook_secret_of_its_own(start_service, caplog):
    caplog.set_level(logging.WARNING, "taskd")
    tenants = [
        ScopedKey(TENANT_A, projects=["pa"]),
        ScopedKey(TENANT_B, projects=["pb"], webhook_secret=SECRET_B),
    ]

    await start_service(workers=False, auth=AuthConfig(api_keys=[API_KEY], keys=tenants))

    warned = [r.getMessage() for r in caplog.records if "has no webhook_secret" in r.getMessage()]
    assert [message.split(":")[0] for message in warned] == [
        "auth.keys[0] (projects pa) has no webhook_secret"
    ]


async def test_the_task_record_keeps_a_key_id_never_the_key(start, receiver, redis):
    service = await start(secret=GLOBAL)
    task_id = await submit_as(service, TENANT_A, receiver.url())

    fields = await redis.hgetall(keys.task(task_id))

    assert b"key_id" in fields
    assert not any(TENANT_A.encode() in value for value in fields.values())


async def test_the_task_record_keeps_an_id_of_its_keys_secret_never_the_secret(start, receiver, redis):
    service = await start(secret=GLOBAL)
    task_id = await submit_as(service, TENANT_A, receiver.url())

    fields = await redis.hgetall(keys.task(task_id))

    assert b"webhook_secret_id" in fields
    assert not any(
        part in value for value in fields.values() for part in (SECRET_A.encode(), SECRET_A[6:].encode())
    )


def test_a_damaged_secret_file_stops_start_up_with_one_line(tmp_path):
    path = tmp_path / SECRET_FILE
    path.write_text("whsec_trunc")

    with pytest.raises(ConfigError, match="webhook_secret"):
        load_or_create_secret(path)


def _make_secret(path: str) -> str:
    return load_or_create_secret(Path(path))


def test_processes_starting_together_agree_on_one_made_secret(tmp_path):
    path = str(tmp_path / SECRET_FILE)

    with multiprocessing.get_context("spawn").Pool(6) as pool:
        made = pool.map(_make_secret, [path] * 12)

    assert len(set(made)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]


def test_start_up_output_names_the_secret_file_but_never_prints_the_secret(spawn_taskd, tmp_path, valkey_url):
    data_dir = tmp_path / "data"
    process = spawn_taskd("serve", "--no-worker", env=child_env(data_dir, TASKD_REDIS__URL=valkey_url))

    process.stop()
    assert process.proc.stdout is not None
    output = process.proc.stdout.read()
    secret = (data_dir / SECRET_FILE).read_text().strip()

    assert str(data_dir / SECRET_FILE) in output
    assert secret.removeprefix("whsec_") not in output


NOT_WHSEC = "'webhook_secret' must be whsec_"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"key": "k-1234567890", "webhook_secret": "not-a-secret"}, NOT_WHSEC),
        ({"key": "k-1234567890", "webhook_secret": "whsec_c2hvcnQ="}, NOT_WHSEC),
        ({"key": "k-1234567890", "previous_webhook_secret": GLOBAL}, "needs a 'webhook_secret'"),
    ],
    ids=["not-whsec", "too-short", "previous-without-current"],
)
def test_a_bad_per_key_webhook_secret_stops_start_up(entry, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config(environ={"TASKD_AUTH__KEYS": json.dumps([entry])})


def test_a_bad_previous_secret_stops_start_up():
    with pytest.raises(ConfigError, match="'previous_secret' must be whsec_"):
        load_config(environ={"TASKD_WEBHOOKS__PREVIOUS_SECRET": "whsec_c2hvcnQ="})
