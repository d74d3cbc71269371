"""The animatic's vocabulary: free-text camera, lighting, position and action words mapped by keyword.

The API document gives these fields as free text (`"wide_shot"`, `"dramatic_noir"`, `"center_frame"`,
`"walking_slowly"`), so any string of up to 500 characters (the bound at submit, for a video
provider's prompt) is accepted; this module finds the first rule whose keywords appear in it and
names the vocabulary value the renderer applies, or `UNRECOGNISED`. Rules are tried in order, so
`"wide tracking shot"` is a tracking shot and `"dramatic noir"` is noir.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

UNRECOGNISED = "unrecognised"
# Only the start of a text is read: a shot description is a few words, and the handler reads it in
# the event loop, where a megabyte of text matched against every keyword would hold up the API.
READ_CHARACTERS = 200
# What a camera_angle or lighting that was not given is reported as.
DEFAULT_CAMERA = "ken_burns"
NO_GRADE = "none"

Rules = Sequence[tuple[str, tuple[str, ...]]]

# Each rule: (vocabulary value, keywords). A keyword of several words matches those words in a row,
# or written as one word ("low key", "low_key" and "lowkey" alike).
CAMERA_RULES: Rules = (
    ("dutch_tilt", ("dutch", "canted", "tilted", "oblique")),
    ("pan_left", ("pan left", "panning left", "left pan")),
    ("pan_right", ("pan right", "panning right", "right pan", "pan", "panning", "panorama")),
    ("tracking", ("tracking", "track", "follow", "following", "dolly", "trucking", "steadicam")),
    ("push_in", ("close", "closeup", "push", "push in", "zoom in", "dolly in", "insert", "detail", "macro")),
    (
        "zoom_out",
        ("wide", "establishing", "long", "extreme long", "aerial", "full", "master", "zoom out", "pull"),
    ),
    (
        "static",
        ("static", "locked", "still", "fixed", "tripod", "medium", "mid", "two shot", "over the shoulder"),
    ),
)

LIGHTING_RULES: Rules = (
    ("noir", ("noir", "black and white", "monochrome", "greyscale", "grayscale", "bw")),
    ("neon", ("neon", "cyberpunk", "synthwave", "fluorescent", "club")),
    ("golden_hour", ("golden", "sunset", "sunrise", "magic hour", "warm")),
    ("night", ("night", "moonlight", "moonlit", "midnight", "nocturnal")),
    ("high_key", ("high key", "bright", "daylight", "sunny", "overexposed")),
    ("low_key", ("low key", "dramatic", "moody", "shadow", "shadows", "shadowy", "dark", "chiaroscuro")),
)

POSITION_RULES: Rules = (
    ("left_third", ("left third", "third left")),
    ("right_third", ("right third", "third right")),
    ("left", ("left", "far left", "left edge", "frame left", "screen left")),
    ("right", ("right", "far right", "right edge", "frame right", "screen right")),
    ("center", ("center", "centre", "middle", "central")),
)

DEPTH_RULES: Rules = (
    ("foreground", ("foreground", "front", "near", "close")),
    ("background", ("background", "back", "distance", "distant", "far away", "behind")),
)

ACTION_RULES: Rules = (
    ("run", ("run", "running", "runs", "sprint", "sprinting", "chase", "chasing", "fleeing", "flee")),
    ("walk", ("walk", "walking", "walks", "stroll", "strolling", "pacing", "paces", "crossing", "crosses")),
    ("enter", ("enter", "enters", "entering", "arrive", "arrives", "arriving")),
    ("exit", ("exit", "exits", "exiting", "leave", "leaves", "leaving", "departing")),
    ("approach", ("approach", "approaches", "approaching", "towards camera", "toward camera", "advancing")),
    ("recede", ("recede", "recedes", "receding", "retreat", "retreating", "away from camera")),
    ("jump", ("jump", "jumps", "jumping", "leap", "leaping", "bounce", "bouncing")),
    (
        "idle",
        ("stand", "standing", "stands", "idle", "wait", "waiting", "still", "sitting", "sits", "watching"),
    ),
)

# Where a named position puts a character's centre, as a fraction of the frame's width.
POSITION_X = {"left": 0.2, "left_third": 1 / 3, "center": 0.5, "right_third": 2 / 3, "right": 0.8}
# A depth scales the character and moves its feet up the frame (further away) or down (nearer).
DEPTH_SCALE = {"foreground": 1.3, "midground": 1.0, "background": 0.6}


def words(text: str) -> list[str]:
    """The first READ_CHARACTERS of the text in lower case, split into words at anything not a letter or digit."""
    return [w for w in re.split(r"[^0-9a-z]+", text[:READ_CHARACTERS].lower()) if w]


def _has(found: list[str], keyword: str) -> bool:
    wanted = keyword.split()
    return any(found[i : i + len(wanted)] == wanted for i in range(len(found) - len(wanted) + 1))


def match(text: str | None, rules: Rules) -> str | None:
    """The value of the first rule with a keyword in `text`; None when no rule matches."""
    found = words(text or "")
    for value, keywords in rules:
        if any(_has(found, k) or k.replace(" ", "") in found for k in keywords):
            return value
    return None


def camera(text: str | None) -> str:
    """The camera move of `camera_angle`: DEFAULT_CAMERA when not given, UNRECOGNISED when not mapped."""
    if text is None or not text.strip():
        return DEFAULT_CAMERA
    return match(text, CAMERA_RULES) or UNRECOGNISED


def lighting(text: str | None) -> str:
    """The grade of `lighting`: NO_GRADE when not given, UNRECOGNISED when not mapped."""
    if text is None or not text.strip():
        return NO_GRADE
    return match(text, LIGHTING_RULES) or UNRECOGNISED


@attrs.frozen
class Blocking:
    """Where one character stands and what it does, as the vocabulary reads its free text."""

    position: str  # a POSITION_X key, "auto" (spread with the others) or UNRECOGNISED (spread too)
    depth: str  # a DEPTH_SCALE key
    action: str  # an ACTION_RULES value, "idle" when not given, or UNRECOGNISED (then idle)
    direction: int  # +1 moves right, -1 left, for the actions that move across
    speed: float  # 1 normal; "slowly" halves, "quickly" doubles


def blocking(position: str | None, action: str | None) -> Blocking:
    """Read a character_positions entry's `position` and `action` texts."""
    if position is None or not position.strip():
        where = "auto"
    else:
        where = match(position, POSITION_RULES) or UNRECOGNISED
    depth = match(position, DEPTH_RULES) or "midground"
    given = action is not None and action.strip()
    does = (match(action, ACTION_RULES) or UNRECOGNISED) if given else "idle"
    said = words(action or "")
    if "left" in said:
        direction = -1
    elif "right" in said:
        direction = 1
    else:
        # Without a direction a character moves towards the far side of the frame from where it stands.
        direction = -1 if POSITION_X.get(where, 0.5) > 0.5 else 1
    speed = 1.0
    if any(w in said for w in ("slow", "slowly", "cautious", "cautiously", "careful", "carefully")):
        speed = 0.5
    elif any(w in said for w in ("fast", "quick", "quickly", "rapid", "rapidly", "hurried", "hurriedly")):
        speed = 2.0
    return Blocking(where, depth, does, direction, speed)
