"""taskd's Redis key names agree with arq's."""

from __future__ import annotations

from arq import constants

from taskd import keys


def test_arq_job_keys_match_arq():
    assert constants.job_key_prefix == keys.ARQ_JOB_PREFIX
    assert constants.in_progress_key_prefix == keys.ARQ_IN_PROGRESS_PREFIX


def test_task_keys_are_namespaced():
    assert keys.task("abc") == "taskd:task:abc"
    assert keys.project("p1") == "taskd:project:p1"
    assert keys.queue("gpu_heavy") == "taskd:queue:gpu_heavy"


def test_an_idempotency_key_is_kept_per_api_key_under_a_hash_of_fixed_length():
    long = keys.idempotency("kid1", "k" * 255)

    assert long.startswith("taskd:idempotency:kid1:")
    assert len(long) == len(keys.idempotency("kid1", "k"))
    assert keys.idempotency("kid2", "k") != keys.idempotency("kid1", "k")
