"""The Idempotency-Key of a submit or a retry: checked, and made into what the store remembers.

A caller that timed out resends the same request with the same key and gets the first answer
instead of a second task. The key belongs to the API key that sent it (two keys' requests never
meet), and is bound to what it first asked for: the route (so a submit's key is not a retry's) and
the body, compared as JSON (so the order of its fields and its spacing do not matter).
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import orjson

from taskd import keys
from taskd.model import ApiError, ValidationError
from taskd.store import Idempotency

HEADER = "Idempotency-Key"
# The header a replayed answer carries.
REPLAYED = "Idempotent-Replayed"
MAX_KEY = 255
# The deepest [route, body] orjson writes is 254 levels: the body within it, 253.
MAX_DEPTH = 253


def idempotency(headers: list[str], key_id: str, route: str, body: Any) -> Idempotency | None:
    """The Idempotency of a request from its `Idempotency-Key` field lines (None without one); a 400
    naming the header when it is sent more than once, empty or over MAX_KEY characters."""
    if not headers:
        return None
    if len(headers) > 1:
        # Which one counts is not for taskd to guess: a proxy that joins the lines ("a, b", RFC 9110
        # 5.3) would make a resend through it another key than the same request sent directly.
        raise ValidationError(
            {HEADER: f"{HEADER} must be sent once, not {len(headers)} times"}, f"Invalid {HEADER} header"
        )
    header = headers[0]
    if not 1 <= len(header) <= MAX_KEY:
        raise ValidationError(
            {HEADER: f"{HEADER} must be 1-{MAX_KEY} characters"}, f"Invalid {HEADER} header"
        )
    try:
        canonical = orjson.dumps([route, body], option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # orjson writes at most 254 levels, and parses up to 1024: a body deeper than that in a field
        # taskd ignores (task_data and metadata are held to limits.max_task_data_depth) was a 500.
        raise ValidationError(
            {
                "body": f"Request body must be nested at most {MAX_DEPTH} levels deep when sent with an {HEADER}"
            },
            "Invalid request body",
        ) from None
    return Idempotency(keys.idempotency(key_id, header), hashlib.sha256(canonical).hexdigest())


def unless_remembered(refused: ApiError | None, remembered: Idempotency | None) -> Idempotency | None:
    """The Idempotency to store a request with that a check of the moment `refused` (None: passed).

    Refused, it stands unless the request's Idempotency-Key is remembered, which the script decides
    (TaskStore.create, create_batch): it stores nothing then, and answers with the first request's
    tasks (or a 422), or raises `refused` for a key it does not remember. A resend of a stored
    request (its answer lost, or a 503 after it) gets that task; refused for a disk nearly full now
    or a callback name that does not resolve now, the caller would read the task as never stored
    and could send it again under a new key. A check that refused first is the one raised.
    """
    if refused is None:
        return remembered
    if remembered is None:
        raise refused
    return remembered if remembered.refused is not None else attrs.evolve(remembered, refused=refused)
