"""What taskd cannot work without on its Redis, checked once at start: Lua scripts (SCRIPT LOAD,
EVALSHA), and scripts that publish on taskd's channels.

Every submit, take, finish and cancel is a script, and most publish (wake-ups, cancels). A Redis
that renamed or disabled a script command (`rename-command`), or whose ACL user lacks it or the
channels (a new Valkey user has no channels), took taskd in: it started, then every request that
wrote answered a 500 with a traceback (a renamed command) or a 503 (an ACL refusal), and the workers
looped on the refusal. Refused at start, the operator reads one line naming what is missing.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from taskd import keys

# A script that publishes to a channel of taskd's that nobody listens on: run, it shows that Redis
# takes SCRIPT LOAD and EVALSHA from taskd's user and lets its scripts publish on taskd's channels.
_PROBE = (resources.files("taskd") / "lua" / "start_check.lua").read_text(encoding="utf-8")
_PROBE_SHA = hashlib.sha1(_PROBE.encode()).hexdigest()
WHAT_TO_GRANT = (
    "taskd needs Lua scripts (SCRIPT LOAD, EVALSHA) and pub/sub on its channels: do not rename or "
    "disable them (rename-command), and give taskd's ACL user ~* &* +@all (docs/production.md, "
    "When start-up fails)"
)


class CommandsRefused(RedisError):  # type: ignore[misc]
    """Redis lacks, or refuses taskd's user, a command taskd cannot work without."""


async def check_commands(redis: Redis, who: str = "Redis") -> None:
    """Raise CommandsRefused naming each command Redis refused, in Redis's own words; `who` names
    the server where it is one of several (taskd.redis_conn.redis_of)."""
    refused = []
    try:
        await redis.script_load(_PROBE)
    except ResponseError as exc:
        refused.append(f"SCRIPT LOAD: {exc}")
    try:
        await redis.evalsha(_PROBE_SHA, 0, keys.START_CHECK_CHANNEL)
    except NoScriptError:
        pass  # EVALSHA is there; the script is not, as SCRIPT LOAD was refused: said above
    except ResponseError as exc:
        refused.append(f"EVALSHA of a script that publishes on {keys.START_CHECK_CHANNEL}: {exc}")
    if refused:
        message = "; ".join([*refused, WHAT_TO_GRANT])
        raise CommandsRefused(message if who == "Redis" else f"{who}: {message}")
