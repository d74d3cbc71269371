"""The built-in renderer's ffmpeg filter graph: camera moves, cross-fades, character layers, grades.

Everything here is formatted by taskd from typed numbers and names of the vocabulary: no text a
caller sent reaches the graph. Labels and titles are drawn from files (`drawtext textfile=`,
`expansion=none`), and the only paths in the graph are the task's scratch files and a font.
"""

from __future__ import annotations

import glob
import itertools
import math
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from taskd.media.clip import ClipRequest, Layer, Pose

FADE_SECONDS = 0.5
# The transitions between shots, as ffmpeg's xfade names them ("cut" has none: the shots are joined).
XFADE = {
    "crossfade": "fade",
    "dissolve": "dissolve",
    "fade_to_black": "fadeblack",
    "wipe": "wipeleft",
    "slide": "slideleft",
}
_ZOOM = 0.12
_DUTCH_DEGREES = 8.0
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
)
# The backdrop when a clip has layers but no image to put them on: a grey set with a darker floor.
BACKDROP = "0x50545c"
FLOOR = "0x34373d"
# Marker colours, one per layer in turn: far enough apart to tell characters apart after any grade.
MARKER_COLOURS = (
    "0xe0533d",
    "0x3d8be0",
    "0x47b35a",
    "0xe0b33d",
    "0x9b59d0",
    "0x3dc7c7",
    "0xd05c9b",
    "0x8c8c8c",
)

# Each lighting's grade, in ffmpeg eq / curves / hue (and vignette) settings. Tints are per-channel
# curves, which are lookup tables: colorbalance gives the same tints at about ten times the CPU
# (11 CPU-seconds for 7 s of 1080p against 1).
GRADE_FILTERS = {
    "none": "",
    "noir": "hue=s=0,eq=contrast=1.35:brightness=-0.03,vignette=angle=PI/5",
    "golden_hour": "curves=r='0/0.04 0.5/0.58 1/1':g='0/0.02 0.5/0.52 1/0.97':b='0/0 0.5/0.4 1/0.85',"
    "eq=saturation=1.15",
    "night": "eq=brightness=-0.1:saturation=0.55,"
    "curves=r='0/0 0.5/0.38 1/0.85':g='0/0 0.5/0.42 1/0.9':b='0/0.04 0.5/0.55 1/1'",
    "high_key": "curves=all='0/0.08 0.5/0.68 1/1',eq=contrast=0.85:saturation=0.9",
    "low_key": "curves=all='0/0 0.35/0.18 0.7/0.6 1/0.92',eq=contrast=1.2,vignette=angle=PI/4",
    "neon": "eq=saturation=1.9:contrast=1.15,"
    "curves=r='0/0.03 0.5/0.52 1/1':g='0/0 0.5/0.44 1/0.92':b='0/0.08 0.5/0.6 1/1',hue=h=-10",
}


def frames(holds: Sequence[float], total: int) -> list[int]:
    """Whole frames per shot by largest remainder, so that they add up to exactly `total`."""
    exact = [h / sum(holds) * total for h in holds]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return [max(1, f) for f in counts]


def _even(value: float) -> int:
    return max(2, 2 * math.ceil(value / 2))


def _motion(name: str, count: int) -> str:
    t = f"on/{max(1, count - 1)}"
    centre = "x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)'"
    return {
        "zoom_in": f"z='1+{_ZOOM}*{t}':{centre}",
        "dutch_tilt": f"z='1+{_ZOOM / 2}*{t}':{centre}",
        "zoom_out": f"z='{1 + _ZOOM}-{_ZOOM}*{t}':{centre}",
        "pan_right": f"z='{1 + _ZOOM}':x='(iw-iw/zoom)*{t}':y='ih/2-(ih/zoom/2)'",
        "pan_left": f"z='{1 + _ZOOM}':x='(iw-iw/zoom)*(1-{t})':y='ih/2-(ih/zoom/2)'",
        "static": "z='1':x='0':y='0'",
    }[name]


def _shot(source: str, motion: str, count: int, clip: ClipRequest, label: str) -> str:
    # One frame of the image (an animated GIF, APNG or WebP has more), held for `count` frames.
    width, height = clip.width, clip.height
    tilt = ""
    if motion == "dutch_tilt":
        # Rendered larger, then turned and cropped back: the enlargement keeps the corners filled.
        angle = math.radians(_DUTCH_DEGREES)
        cover = math.cos(angle) + max(width / height, height / width) * math.sin(angle)
        width, height = _even(clip.width * cover), _even(clip.height * cover)
        tilt = f",rotate=a={angle:.6f}:ow={clip.width}:oh={clip.height}:c=black"
    return (
        f"[{source}]trim=end_frame=1,scale={width}:{height}:force_original_aspect_ratio=increase,"
        f"crop={width}:{height},setsar=1,"
        f"zoompan={_motion(motion, count)}:d={count}:s={width}x{height}:fps={clip.fps}{tilt},"
        f"format=yuv420p,trim=end_frame={count}[{label}]"
    )


def slideshow_graph(
    sources: Sequence[str], motions: Sequence[str], holds: Sequence[int], fade: int, clip: ClipRequest
) -> tuple[list[str], str]:
    """The filter chains for the shots from `sources` (`holds` in frames), cross-faded; and their output label."""
    parts = []
    for i, (source, motion, hold) in enumerate(zip(sources, motions, holds, strict=True)):
        parts.append(_shot(source, motion, hold + (fade if i < len(holds) - 1 else 0), clip, f"s{i}"))
    if len(holds) == 1:
        return parts, "s0"
    if fade == 0:
        inputs = "".join(f"[s{i}]" for i in range(len(holds)))
        # concat times a shot by its end's timestamp, which zoompan leaves at its last frame's, so a
        # shot of one frame counted as none and the next overlaid it: the clip came out short (8
        # shots of one frame made 3). Each shot has exactly its frames: they are numbered in turn.
        parts.append(f"{inputs}concat=n={len(holds)}:v=1:a=0,setpts=N/({clip.fps}*TB)[shots]")
        return parts, "shots"
    last, elapsed = "s0", 0
    for i in range(1, len(holds)):
        elapsed += holds[i - 1]
        label = f"x{i}"
        parts.append(
            f"[{last}][s{i}]xfade=transition={XFADE[clip.transition]}:duration={fade / clip.fps:.6f}:"
            f"offset={elapsed / clip.fps:.6f}[{label}]"
        )
        last = label
    return parts, last


def backdrop(clip: ClipRequest, label: str) -> str:
    """A source chain of one frame of the plain set: grey, with a floor on its lower third."""
    floor_y = round(clip.height * 2 / 3)
    return (
        f"color=c={BACKDROP}:s={clip.width}x{clip.height}:r={clip.fps},trim=end_frame=1,"
        f"drawbox=x=0:y={floor_y}:w={clip.width}:h={clip.height - floor_y}:color={FLOOR}:t=fill[{label}]"
    )


def _eased(easing: str, p: str) -> str:
    return {
        "linear": p,
        "ease_in": f"{p}*{p}",
        "ease_out": f"{p}*(2-{p})",
        "ease_in_out": f"{p}*{p}*(3-2*{p})",
    }[easing]


def track(poses: Sequence[Pose], value: str, time: str = "t") -> str:
    """An ffmpeg expression of `time` for one attribute of the poses, eased from each pose to the next.

    The first pose's value plus, for each step that changes the value, its change times the eased
    progress through that step (0 before it starts, 1 after it ends): flat, however many poses.
    """
    values = [float(getattr(p, value)) for p in poses]
    terms = [f"{values[0]:.6f}"]
    for a, b, va, vb in zip(poses, poses[1:], values, values[1:], strict=False):
        if vb == va:
            continue
        span = f"{b.time - a.time:.6f}"
        if float(span) <= 0:
            # Two poses at one time, or closer than the microsecond the expression is written to
            # (0.1 + 0.2 and 0.3): the value jumps there. Divided by 0.000000, the step was NaN at
            # the first one's time, and a character at it was drawn nowhere in that frame.
            terms.append(f"({vb - va:.6f})*gte({time},{b.time:.6f})")
            continue
        progress = f"clip(({time}-{a.time:.6f})/{span},0,1)"
        terms.append(f"({vb - va:.6f})*{_eased(a.easing, progress)}")
    return _sum(terms)


def _sum(terms: Sequence[str]) -> str:
    """`terms` added up as a balanced tree of brackets: ffmpeg's expression parser refuses an
    expression nested about 100 deep, and `a+b+c+…` nests one level per `+` (a track of 120
    keyframes failed to parse); halves in brackets nest log2(len(terms)) deep."""
    if len(terms) <= 2:
        return "+".join(terms)
    half = len(terms) // 2
    return f"({_sum(terms[:half])})+({_sum(terms[half:])})"


def _varies(poses: Sequence[Pose], value: str) -> bool:
    return len({getattr(p, value) for p in poses}) > 1


def marker(layer: Layer, index: int, clip: ClipRequest, workdir: Path, label: str) -> str:
    """A source chain of one frame of a labelled marker: a coloured figure with the layer's label on it.

    Used for a character that has no image. The label goes through a file, drawn as written.
    """
    height = _even(layer.height * clip.height)
    width = _even(height * 0.45)
    colour = MARKER_COLOURS[index % len(MARKER_COLOURS)]
    steps = [
        f"color=c=black@0:s={width}x{height}:r={clip.fps},format=rgba,trim=end_frame=1",
        # Head and body.
        f"drawbox=x={round(width * 0.3)}:y=0:w={round(width * 0.4)}:h={round(height * 0.2)}:color={colour}@1:t=fill:replace=1",
        f"drawbox=x={round(width * 0.1)}:y={round(height * 0.23)}:w={round(width * 0.8)}:h={height - round(height * 0.23)}:"
        f"color={colour}@1:t=fill:replace=1",
    ]
    font = find_font()
    if font:
        text_file = workdir / f"label{index}.txt"
        text_file.write_text("\n".join(textwrap.wrap(layer.label[:30], 10)) or " ", "utf-8")
        steps.append(
            f"drawtext=fontfile='{escape(font)}':textfile='{escape(str(text_file))}':expansion=none:"
            f"fontcolor=white:fontsize={max(6, width // 7)}:x=(w-text_w)/2:y={round(height * 0.3)}"
        )
    return ",".join(steps) + f"[{label}]"


def _frame_at(time: float, clip: ClipRequest) -> int:
    """The first frame shown at or after `time` seconds (0..frame_count). A millionth of a frame early
    still counts as on time: keyframe times spread over the frames are sums of floats."""
    return min(clip.frame_count, max(0, math.ceil(time * clip.fps - 1e-6)))


def image_runs(layer: Layer, clip: ClipRequest) -> list[tuple[str | None, int]]:
    """The layer's images in turn (None: its marker), each with its number of frames on screen; an image
    that changes again before the next frame has none and is left out."""
    starts = [0, *(_frame_at(c.time, clip) for c in layer.image_changes)]
    ends = [*starts[1:], clip.frame_count]
    images = [layer.image_url, *(c.image_url for c in layer.image_changes)]
    return [
        (image, end - start) for image, start, end in zip(images, starts, ends, strict=True) if end > start
    ]


def _shown(runs: Sequence[tuple[str | None, int]]) -> list[str | None]:
    """The distinct images of `runs`, in the order they first come."""
    return list(dict.fromkeys(image for image, _ in runs))


def _fitted(size: tuple[int, int], box_h: int) -> tuple[int, int]:
    """An image's size scaled to fit a box `box_h` tall and twice that wide, as ffmpeg's scale with
    force_original_aspect_ratio=decrease makes it (each side rounded to the nearest pixel)."""
    width, height = (max(1, side) for side in size)
    return (
        max(1, min(2 * box_h, math.floor(box_h * width / height + 0.5))),
        max(1, min(box_h, math.floor(2 * box_h * height / width + 0.5))),
    )


def _image_track(
    pictures: Mapping[str, str],
    sizes: Mapping[str, tuple[int, int]],
    runs: Sequence[tuple[str | None, int]],
    box_h: int,
    clip: ClipRequest,
    out: str,
) -> tuple[list[str], str]:
    """The chains that hold each of `pictures` for the whole clip, each keeping only the frames of its
    own `runs`; and the start of a chain that interleaves them into one stream, a frame each.

    Each image is fitted into the box once, and its frames are references to that one picture. All is
    made on demand, a frame each time the chain after it wants one. (Looped runs joined by `concat` were
    not: concat hands on whatever its inputs hold as fast as it can, so the turning and scaling after it
    ran ahead over the runs and the overlay held each of their frames.)
    """
    fitted = {image: _fitted(sizes[image], box_h) for image in pictures}
    # Each image at the size it would have alone (named, so a header that lies cannot make it larger),
    # centred in a transparent box just big enough for the largest: interleave takes one size, a new
    # drawing's centre is where the last one's was, and no turn works on more than the drawings need
    # (a box twice as wide as tall cost three times the CPU of a portrait drawing's).
    wide, tall = (max(side) for side in zip(*fitted.values(), strict=True))
    starts = list(itertools.accumulate((frames for _, frames in runs), initial=0))
    chains, labels = [], []
    for n, (image, picture) in enumerate(pictures.items()):
        shown = [
            f"between(n,{start},{start + frames - 1})"
            for (run_image, frames), start in zip(runs, starts, strict=False)
            if run_image == image
        ]
        width, height = fitted[image]
        labels.append(f"{out}_i{n}")
        chains.append(
            # rgba only after the scale: turned into rgba at its full size, each image was held a second
            # time at 4 bytes a pixel (32 phone photos took a render past 2 GB); and rgba before pad, for
            # in a YUV format pad would round an odd box down, below the image.
            # Fitted, not forced, into its size: ffmpeg turns a JPEG by its EXIF orientation, which its
            # header's size does not; forced, a turned photo was stretched (never larger than the box).
            f"[{picture}]trim=end_frame=1,"
            f"scale=w={width}:h={height}:force_original_aspect_ratio=decrease,format=rgba,"
            f"pad=w={wide}:h={tall}:x=(ow-iw)/2:y=(oh-ih)/2:color=black@0,setsar=1,"
            f"loop=loop={clip.frame_count - 1}:size=1:start=0,setpts=N/({clip.fps}*TB),"
            f"select='{_sum(shown)}'[{labels[-1]}]"
        )
    joined = "".join(f"[{label}]" for label in labels)
    return chains, f"{joined}interleave=nb_inputs={len(labels)}"


def layer_chains(
    pictures: Mapping[str | None, str],
    sizes: Mapping[str, tuple[int, int]],
    runs: Sequence[tuple[str | None, int]],
    layer: Layer,
    clip: ClipRequest,
    workdir: Path,
    base: str,
    out: str,
) -> list[str]:
    """The chains that show the layer's images for their `runs` in turn (`pictures`: the label of a
    stream of each, by URL, or of its marker; `sizes`: each image's width and height) and lay the
    result over `base` as `out`, moving along the layer's poses.

    One picture stream, turned, scaled, faded and placed once per frame, however many times its image
    changes: each change of image as a layer of its own cost an ffmpeg input and a chain of box-sized
    buffers per change (120 changes at 1080p: over 13 GB).
    """
    poses = layer.poses
    biggest = max(p.scale for p in poses)
    box_h = _even(layer.height * clip.height * biggest)
    parts: list[str] = []
    if len(pictures) == 1:
        (picture,) = pictures.values()
        # rgba only at the size it is shown at (see _image_track).
        steps = [
            f"[{picture}]trim=end_frame=1,"
            f"scale=w={box_h * 2}:h={box_h}:force_original_aspect_ratio=decrease,format=rgba,"
            f"loop=loop={clip.frame_count - 1}:size=1:start=0,setpts=N/({clip.fps}*TB)"
        ]
    else:
        # Several pictures are images: a marker layer has one.
        images = {image: label for image, label in pictures.items() if image is not None}
        parts, joined = _image_track(images, sizes, runs, box_h, clip, out)
        steps = [joined]
    if any(p.rotation for p in poses):
        # Padded to its diagonal first, so that no turn crops it; the centre stays the centre.
        steps.append(
            "pad=w='ceil(hypot(iw,ih))':h='ceil(hypot(iw,ih))':x='(ow-iw)/2':y='(oh-ih)/2':color=black@0,"
            f"rotate=a='({track(poses, 'rotation')})*PI/180':c=none"
        )
    if any(p.opacity != 1 for p in poses):
        # The alpha scaled by a command each frame (sendcmd evaluates the track at the frame's time T):
        # a per-pixel multiply, where geq would evaluate an expression for every pixel of every frame.
        commands = workdir / f"{out}_opacity.cmd"
        mixer = f"colorchannelmixer@{out}"
        commands.write_text(
            f"0-{clip.duration + 1:.3f} [expr] {mixer} aa 'clip({track(poses, 'opacity', 'T')},0,1)';\n",
            "utf-8",
        )
        steps.append(f"sendcmd=f='{escape(str(commands))}',{mixer}=aa=1")
    if _varies(poses, "scale"):
        factor = f"({track(poses, 'scale')})/{biggest:.6f}"
        steps.append(f"scale=w='max(1,iw*{factor})':h='max(1,ih*{factor})':eval=frame")
    sprite = f"{out}_sprite"
    return [
        *parts,
        ",".join(steps) + f"[{sprite}]",
        f"[{base}][{sprite}]overlay=x='W*({track(poses, 'x')})-w/2':y='H*({track(poses, 'y')})-h/2':"
        f"eval=frame[{out}]",
    ]


def grade(name: str) -> str:
    """The filters of a grade (empty for none)."""
    return GRADE_FILTERS[name]


def find_font() -> str | None:
    """A TrueType font for titles and labels, or None (then cards are plain and markers unlabelled)."""
    for path in FONT_CANDIDATES:
        if Path(path).is_file():
            return path
    found = sorted(glob.glob("/usr/share/fonts/**/*.ttf", recursive=True))
    return found[0] if found else None


def escape(value: str) -> str:
    """A value for inside '…' in a filter's options: backslashes, colons and quotes escaped."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("'", "\\'")


# Subtitles: at most this many lines of a line's text on screen, the rest cut with an ellipsis.
SUBTITLE_ROWS = 3


def subtitles(clip: ClipRequest, workdir: Path) -> list[str]:
    """The filters that burn in the clip's subtitles, each from its own file and only in its time.

    Drawn last (over the grade, so a noir grade does not grey them), white on a dark band at the foot
    of the picture, wrapped to the frame's width. None without a font.
    """
    font = find_font()
    if not (font and clip.subtitles):
        return []
    size = max(10, clip.height // 20)
    # DejaVu Sans averages about 0.55 of its size a character: wrap at what fits in 90 % of the width.
    width = max(10, int(clip.width * 0.9 / (size * 0.55)))
    steps = []
    for index, line in enumerate(clip.subtitles):
        rows = textwrap.wrap(line.text, width, max_lines=SUBTITLE_ROWS, placeholder=" …") or [" "]
        text_file = workdir / f"subtitle{index}.txt"
        text_file.write_text("\n".join(rows), "utf-8")
        steps.append(
            f"drawtext=fontfile='{escape(font)}':textfile='{escape(str(text_file))}':expansion=none:"
            f"fontcolor=white:fontsize={size}:line_spacing={max(2, size // 5)}:"
            f"box=1:boxcolor=black@0.6:boxborderw={max(2, size // 4)}:"
            f"x=(w-text_w)/2:y=h-text_h-{max(4, clip.height // 18)}:"
            f"enable='gte(t,{line.start:.6f})*lt(t,{line.end:.6f})'"
        )
    return steps


def title_graph(clip: ClipRequest, workdir: Path, total: int) -> tuple[str, str]:
    """The filter graph of a title card over input 0 (a colour source): the title, fading in and out.

    The caller's text reaches ffmpeg only as a file, drawn as it is: `expansion=none`, so `%{...}`
    sequences (expressions, metadata, time) in it are letters, not instructions.
    """
    fade = min(1.0, clip.duration / 4)
    steps = [f"[0:v]trim=end_frame={total},setsar=1,format=yuv420p"]
    font = find_font()
    if font and clip.title:
        text_file = workdir / "title.txt"
        text_file.write_text("\n".join(textwrap.wrap(clip.title, 40)[:8]), "utf-8")
        steps.append(
            f"drawtext=fontfile='{escape(font)}':textfile='{escape(str(text_file))}':expansion=none:"
            f"fontcolor=white:fontsize={max(12, clip.height // 18)}:line_spacing={max(4, clip.height // 60)}:"
            "x=(w-text_w)/2:y=(h-text_h)/2"
        )
    steps.extend(subtitles(clip, workdir))
    steps.append(f"fade=t=in:d={fade:.3f},fade=t=out:st={clip.duration - fade:.3f}:d={fade:.3f}")
    return ",".join(steps) + "[out]", "out"


def _feeds(uses: Sequence[str], sources: Sequence[str]) -> tuple[list[str], dict[str, Iterator[str]]]:
    """For each URL, the labels its `uses` take in turn: ffmpeg input `sources.index(url)` itself when
    used once, else the outputs of a `split` of it (a graph reads an input's stream once); and the
    split chains. An image is decoded once however often the clip shows it."""
    chains = []
    feeds: dict[str, Iterator[str]] = {}
    for index, url in enumerate(sources):
        count = uses.count(url)
        labels = [f"{index}:v"] if count < 2 else [f"i{index}_{n}" for n in range(count)]
        if count > 1:
            chains.append(f"[{index}:v]split={count}" + "".join(f"[{label}]" for label in labels))
        feeds[url] = iter(labels)
    return chains, feeds


def animatic(clip: ClipRequest, workdir: Path, sources: Mapping[str, tuple[int, int]]) -> tuple[str, str]:
    """The whole graph: the shots (or the backdrop when none), cross-faded, each layer over them (its
    images, or a marker when it has none), then the grade; and its output label. ffmpeg input i is the
    i-th image of `sources`: its URL and its (width, height) as its header gives them.
    """
    total = clip.frame_count
    runs = [image_runs(layer, clip) for layer in clip.layers]
    # A layer fits each of its images once, however many times the image comes back.
    uses = [s.url for s in clip.shots] + [
        image for shown in runs for image in _shown(shown) if image is not None
    ]
    parts, feeds = _feeds(uses, list(sources))
    if clip.shots:
        holds = frames([s.hold for s in clip.shots], total)
        fading = len(holds) > 1 and clip.transition != "cut"
        fade = min(round(FADE_SECONDS * clip.fps), min(holds) // 2) if fading else 0
        shot_sources = [next(feeds[s.url]) for s in clip.shots]
        motions = [s.motion for s in clip.shots]
    else:
        parts.append(backdrop(clip, "set"))
        holds, fade, shot_sources, motions = [total], 0, ["set"], [clip.backdrop_motion]
    chains, last = slideshow_graph(shot_sources, motions, holds, fade, clip)
    parts.extend(chains)
    for index, (layer, shown) in enumerate(zip(clip.layers, runs, strict=True)):
        if layer.image_url is None:
            parts.append(marker(layer, index, clip, workdir, f"m{index}"))
            pictures: dict[str | None, str] = {None: f"m{index}"}
        else:
            pictures = {image: next(feeds[image]) for image in _shown(shown) if image is not None}
        out = f"l{index}"
        parts.extend(layer_chains(pictures, sources, shown, layer, clip, workdir, last, out))
        last = out
    graded = ",".join(f for f in (grade(clip.grade), *subtitles(clip, workdir), "format=yuv420p") if f)
    parts.append(f"[{last}]{graded}[out]")
    return ";".join(parts), "out"
