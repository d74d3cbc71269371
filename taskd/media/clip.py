"""What a clip renderer is asked for: shots, character layers moving along poses, a grade, a title."""

from __future__ import annotations

from typing import Any

import attrs

# Camera moves a shot can have (the built-in renderer's; a remote model reads `details` instead).
MOTIONS = ("ken_burns", "zoom_in", "zoom_out", "pan_left", "pan_right", "static")
SHOT_MOTIONS = (*MOTIONS[1:], "dutch_tilt")
GRADES = ("none", "noir", "golden_hour", "night", "high_key", "low_key", "neon")
EASINGS = ("linear", "ease_in", "ease_out", "ease_in_out")
TRANSITIONS = ("crossfade", "cut", "dissolve", "fade_to_black", "wipe", "slide")


@attrs.frozen
class Shot:
    """One still image of the clip, on screen for `hold` seconds."""

    url: str
    hold: float
    motion: str = "zoom_in"


@attrs.frozen
class Pose:
    """Where a layer is at `time` seconds, and how it gets from here to the next pose (`easing`)."""

    time: float
    x: float = 0.5  # the layer's centre, as a fraction of the frame's width
    y: float = 0.5  # ... and of its height
    scale: float = 1.0  # 1: the layer's height is its `height` share of the frame's
    rotation: float = 0.0  # degrees, clockwise
    opacity: float = 1.0
    easing: str = "linear"


@attrs.frozen
class ImageChange:
    """From `time` seconds on, a layer shows `image_url` in place of the image before."""

    time: float
    image_url: str


@attrs.frozen
class Layer:
    """A character over the shots: an image (or, without one, a marker labelled `label`) moving along `poses`.

    `poses` are in time order; the layer holds its first pose before the first time and its last after
    the last. `image_changes`, in time order, replace the image at their times: a new drawing at the
    same place on the same path, not a new layer.
    """

    label: str
    image_url: str | None
    poses: list[Pose]
    height: float = 0.5
    image_changes: list[ImageChange] = attrs.Factory(list)

    @property
    def image_urls(self) -> list[str]:
        """The images the layer shows, each once, in the order it first shows them (none for a marker)."""
        if self.image_url is None:
            return []
        return list(dict.fromkeys([self.image_url, *(c.image_url for c in self.image_changes)]))


@attrs.frozen
class Subtitle:
    """A line burned in at the foot of the picture from `start` to `end` seconds, as written."""

    text: str
    start: float
    end: float


@attrs.frozen
class ClipRequest:
    """What to render: shots (holds add up to `duration`) and layers over them; a title card when neither."""

    task_id: str
    shots: list[Shot]
    duration: float
    fps: int
    width: int
    height: int
    title: str | None = None
    details: dict[str, Any] = attrs.Factory(dict)  # the task's descriptive fields, for remote providers
    # The task's project: the built-in renderer reads that project's own media links from the store.
    project_id: str | None = None
    layers: list[Layer] = attrs.Factory(list)
    subtitles: list[Subtitle] = attrs.Factory(list)
    grade: str = "none"
    transition: str = "crossfade"  # between shots: one of TRANSITIONS
    backdrop_motion: str = "static"  # the camera over the plain set, when there are layers but no shots
    # What the built-in renderer follows of the request (camera, lighting, characters), as the vocabulary
    # read it: reported in the result's metadata as `applied` when that renderer made the clip.
    applied: dict[str, Any] = attrs.Factory(dict)

    @property
    def reference_image(self) -> str | None:
        """The picture a video model should start from: the first character's image (an animation's
        subject), else the first shot's; None when the request has no image.
        """
        for layer in self.layers:
            if layer.image_url:
                return layer.image_url
        return self.shots[0].url if self.shots else None

    @property
    def last_frame_time(self) -> float:
        """The time of the clip's last frame, in seconds."""
        return (self.frame_count - 1) / self.fps

    @property
    def frame_count(self) -> int:
        """Frames in the clip: duration times fps, at least one."""
        return max(1, round(self.duration * self.fps))
