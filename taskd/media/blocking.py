"""Characters' blocking turned into layers: where each stands (position, depth) and how it moves (action)."""

from __future__ import annotations

from collections.abc import Sequence

from taskd.media.animatic_vocabulary import DEPTH_SCALE, POSITION_X, Blocking
from taskd.media.clip import Layer, Pose

# A character at scale 1 is this share of the frame's height; its feet stand on the floor line of
# its depth (a fraction of the height from the top).
FIGURE_HEIGHT = 0.55
FEET_Y = {"foreground": 0.97, "midground": 0.9, "background": 0.72}
# How far an action carries a character across the whole clip, in frame widths, at speed 1.
DRIFT = {"walk": 0.3, "run": 0.7}
OFF_LEFT, OFF_RIGHT = -0.2, 1.2
JUMP_HEIGHT = 0.12
JUMP_SECONDS = 0.8
# More characters than this are reported as not drawn: each is an overlay the whole clip long.
MAX_CHARACTERS = 8


def spread(blockings: Sequence[Blocking]) -> list[float]:
    """Each character's x: its named position, or for those without one, evenly spaced across the frame."""
    unplaced = [i for i, b in enumerate(blockings) if b.position not in POSITION_X]
    xs = [POSITION_X.get(b.position, 0.5) for b in blockings]
    for k, i in enumerate(unplaced):
        xs[i] = (k + 1) / (len(unplaced) + 1)
    return xs


def poses(blocking: Blocking, x: float, end: float) -> list[Pose]:
    """The poses of one character from 0 to `end` seconds, for its action."""
    scale = DEPTH_SCALE[blocking.depth]
    feet = FEET_Y[blocking.depth]

    def at(time: float, x: float, scale: float = scale, feet: float = feet, easing: str = "linear") -> Pose:
        return Pose(time=time, x=x, y=feet - FIGURE_HEIGHT * scale / 2, scale=scale, easing=easing)

    action, direction, speed = blocking.action, blocking.direction, blocking.speed
    if end <= 0 or action in ("idle", "unrecognised"):
        return [at(0.0, x)]
    if action in DRIFT:
        return [at(0.0, x), at(end, x + direction * DRIFT[action] * speed)]
    offscreen = OFF_RIGHT if direction > 0 else OFF_LEFT
    if action == "enter":
        start = OFF_LEFT if direction > 0 else OFF_RIGHT
        return [at(0.0, start, easing="ease_out"), at(min(end, 0.6 * end / speed), x)]
    if action == "exit":
        leave = end - 0.6 * end / speed
        stay = [at(0.0, x)] if leave > 0 else []
        return [*stay, at(max(0.0, leave), x, easing="ease_in"), at(end, offscreen)]
    if action in ("approach", "recede"):
        grow = 1.4 if action == "approach" else 0.65
        grown = scale * (1 + (grow - 1) * min(1.0, speed))
        near = min(1.0, feet + (0.06 if action == "approach" else -0.1))
        return [at(0.0, x, easing="ease_in_out"), at(end, x, grown, near)]
    # A jump: up with an ease out, down with an ease in, one hop every JUMP_SECONDS / speed.
    hop = JUMP_SECONDS / speed
    out: list[Pose] = []
    time = 0.0
    while time < end:
        out.append(at(time, x, easing="ease_out"))
        up = at(min(end, time + hop / 2), x, feet=feet - JUMP_HEIGHT, easing="ease_in")
        out.append(up)
        time += hop
    return [*out, at(end, x)] if out[-1].time < end else out


def layers(characters: Sequence[tuple[str, Blocking]], end: float) -> list[Layer]:
    """A marker layer for each of the first MAX_CHARACTERS characters, at its place, moving as it acts."""
    drawn = characters[:MAX_CHARACTERS]
    xs = spread([b for _, b in drawn])
    return [
        Layer(label=name, image_url=None, poses=poses(b, x, end), height=FIGURE_HEIGHT)
        for (name, b), x in zip(drawn, xs, strict=True)
    ]
