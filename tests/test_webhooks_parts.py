"""The webhook building blocks on their own: schedule, back-off, signatures, payloads, config."""

from __future__ import annotations

import pytest

from taskd.backoff import exponential_delay
from taskd.config import ConfigError, load_config
from taskd.model import TaskRecord, TaskStatus
from taskd.webhooks.payload import build_payload, event_id
from taskd.webhooks.schedule import DeliverySchedule
from taskd.webhooks.signing import Signer


def test_documented_schedule_is_four_attempts_at_1_2_4_s():
    schedule = DeliverySchedule()

    assert schedule.max_attempts == 4
    assert [schedule.delay_after(n) for n in range(1, 5)] == [1.0, 2.0, 4.0, None]


def test_extra_delays_follow_the_documented_four():
    schedule = DeliverySchedule((30.0, 300.0))

    assert schedule.max_attempts == 6
    assert [schedule.delay_after(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 30.0, 300.0, None]


def test_backoff_doubles_from_the_base_and_caps():
    assert [exponential_delay(n, 60.0) for n in (1, 2, 3)] == [60.0, 120.0, 240.0]
    assert exponential_delay(5, 1.0, cap=10) == 10


def test_signature_matches_the_standard_webhooks_test_vector():
    signer = Signer.from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")

    headers = signer.headers("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')

    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


def test_a_queued_task_has_no_payload():
    record = TaskRecord("t1", "p1", "test_prompt", "default", {}, status=TaskStatus.QUEUED)

    with pytest.raises(ValueError):
        build_payload(record)


def test_event_id_names_the_task_and_its_terminal_status():
    record = TaskRecord("t1", "p1", "test_prompt", "default", {}, status=TaskStatus.FAILED)

    assert event_id(record) == "msg_t1_failed"


def test_webhook_settings_come_from_the_environment():
    config = load_config(
        environ={
            "TASKD_WEBHOOKS__EXTRA_DELAYS": "30,300,1800",
            "TASKD_WEBHOOKS__TIMEOUT": "5",
            "TASKD_WEBHOOKS__SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "TASKD_WEBHOOKS__PROXY": "http://10.0.0.9:3128",
        }
    )

    assert config.webhooks.extra_delays == [30.0, 300.0, 1800.0]
    assert config.webhooks.timeout == 5.0
    assert config.webhooks.proxy == "http://10.0.0.9:3128"


def test_webhook_defaults_are_the_documented_ones():
    webhooks = load_config(environ={}).webhooks

    assert (webhooks.timeout, webhooks.extra_delays, webhooks.secret, webhooks.allow_private) == (
        30.0,
        [],
        "",
        False,
    )


@pytest.mark.parametrize("secret", ["plain-text", "whsec_not*base64", "whsec_c2hvcnQ="])
def test_a_bad_secret_stops_start_up(secret):
    with pytest.raises(ConfigError, match="secret"):
        load_config(environ={"TASKD_WEBHOOKS__SECRET": secret})
