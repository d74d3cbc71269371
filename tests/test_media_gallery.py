"""The README's "What comes out" gallery (scripts/media_gallery.py) still runs, so its pictures cannot rot.

The script runs once, in its quick mode, against the taskd it starts; the tests read what it wrote.
The committed pictures under docs/images/gallery/ are checked for the same sizes and for being linked.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from PIL import Image, ImageChops, ImageStat

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "media_gallery.py"
COMMITTED = ROOT / "docs" / "images" / "gallery"
# The sizes docs/media.md#the-gallery gives: four 240x135 frames 4 px apart and around, or a waveform.
SHEET, WAVEFORM = (980, 143), (980, 160)
TILE, PAD = (240, 135), 4
SHEETS = ["generate_video", "render_animation"]
WAVEFORMS = ["process_audio", *(["generate_character_voice"] if shutil.which("espeak-ng") else [])]
MAX_PICTURE_BYTES = 150 * 1024


@attrs.frozen
class Run:
    out: Path
    stdout: str


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The script's quick run into a temp dir."""
    out = tmp_path_factory.mktemp("gallery")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return Run(out, result.stdout)


def tiles(sheet: Image.Image) -> list[Image.Image]:
    """The frames of a contact sheet."""
    width, height = TILE
    lefts = [PAD + i * (width + PAD) for i in range(4)]
    return [sheet.crop((left, PAD, left + width, PAD + height)).convert("RGB") for left in lefts]


def test_each_built_in_media_type_saves_the_request_it_sent(gallery: Run) -> None:
    for task_type in SHEETS + WAVEFORMS:
        body = json.loads((gallery.out / f"{task_type}.json").read_text("utf-8"))

        assert body["task_type"] == task_type
        assert body["task_data"]
        # The loopback origin of the inputs is written as a stable placeholder.
        assert "127.0.0.1" not in json.dumps(body)


def test_a_clips_picture_is_four_frames_that_show_something_and_move(gallery: Run) -> None:
    for task_type in SHEETS:
        with Image.open(gallery.out / f"{task_type}.png") as sheet:
            assert sheet.size == SHEET
            frames = tiles(sheet)

        for frame in frames:
            assert max(ImageStat.Stat(frame).stddev) > 10, f"{task_type}: a blank frame"
        differences = [ImageChops.difference(a, b) for a, b in itertools.pairwise(frames)]
        assert any(max(ImageStat.Stat(d).mean) > 1 for d in differences), (
            f"{task_type}: the frames are the same"
        )


def test_an_audio_files_picture_is_a_waveform_across_the_whole_width(gallery: Run) -> None:
    for task_type in WAVEFORMS:
        with Image.open(gallery.out / f"{task_type}.png") as picture:
            assert picture.size == WAVEFORM
            ink = picture.convert("L").point(lambda v: 255 if v < 128 else 0)

        inked_columns = sum(1 for x in range(WAVEFORM[0]) if ink.crop((x, 0, x + 1, WAVEFORM[1])).getbbox())
        assert inked_columns > WAVEFORM[0] * 0.6, f"{task_type}: the waveform is mostly blank"
        assert ImageStat.Stat(ink).mean[0] < 255 * 0.6, f"{task_type}: the waveform is a solid block"


def test_the_types_without_a_built_in_engine_get_no_picture(gallery: Run) -> None:
    assert not (gallery.out / "generate_image.png").exists()
    assert "generate_image: not run: it needs a provider ([providers.image]" in gallery.stdout
    if "generate_character_voice" not in WAVEFORMS:
        assert not (gallery.out / "generate_character_voice.png").exists()
        assert "generate_character_voice: not run: no espeak-ng on PATH" in gallery.stdout


def test_the_committed_gallery_has_every_picture_small_and_at_its_size_and_the_readme_shows_each() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    for task_type, size in [(t, SHEET) for t in SHEETS] + [
        ("process_audio", WAVEFORM),
        ("generate_character_voice", WAVEFORM),
    ]:
        picture = COMMITTED / f"{task_type}.png"

        assert picture.stat().st_size < MAX_PICTURE_BYTES
        with Image.open(picture) as image:
            assert image.size == size
        assert (COMMITTED / f"{task_type}.json").is_file()
        assert f"docs/images/gallery/{task_type}.png" in readme
        assert f"docs/images/gallery/{task_type}.json" in readme
