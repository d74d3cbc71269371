"""Render the API document's generate_video example with the built-in animatic renderer; save one frame.

    .venv/bin/python scripts/animatic_example.py docs/images/animatic-noir.png

The storyboard image (a sketch of an alley) is drawn here with Pillow and served on loopback, so the
renderer fetches it as it fetches any storyboard image: through the guarded downloader.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web
from PIL import Image, ImageDraw

from taskd.config import Config, MediaConfig, NetworkConfig
from taskd.media import ffmpeg, video
from taskd.tasks.builtin import generate_video
from taskd.tasks.builtin.generate_video import CharacterPosition, GenerateVideoInput

WIDTH, HEIGHT = 640, 360


def storyboard() -> bytes:
    """A sketch of an alley in perspective: two walls, a lit doorway, a lamp, wet cobbles."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (70, 90, 120))
    draw = ImageDraw.Draw(image)
    vanish = (WIDTH * 0.55, HEIGHT * 0.45)
    draw.polygon([(0, 0), vanish, (0, HEIGHT)], fill=(120, 80, 60))  # left wall, brick
    draw.polygon([(WIDTH, 0), vanish, (WIDTH, HEIGHT)], fill=(90, 100, 80))  # right wall
    draw.polygon([(0, HEIGHT), vanish, (WIDTH, HEIGHT)], fill=(60, 60, 70))  # street
    for row in range(8):  # brick courses on the left wall
        y = HEIGHT * row / 8
        draw.line([(0, y), vanish], fill=(90, 55, 40), width=2)
    draw.polygon([(470, 140), (500, 150), (500, 230), (470, 250)], fill=(250, 200, 90))  # lit doorway
    draw.line([(120, 60), (120, 330)], fill=(30, 30, 30), width=6)  # lamp post
    draw.ellipse([(100, 40), (140, 80)], fill=(255, 235, 160))
    for x in range(40, WIDTH, 60):  # puddles
        draw.ellipse([(x, 310 + x % 30), (x + 40, 320 + x % 30)], fill=(150, 160, 190))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def render(target: Path) -> None:
    """Serve the storyboard, render the example request, write its middle frame to `target`."""
    body = storyboard()
    app = web.Application()
    app.router.add_get("/storyboard1.png", lambda _: web.Response(body=body, content_type="image/png"))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    data = GenerateVideoInput(
        storyboard_images=[f"http://127.0.0.1:{port}/storyboard1.png"],
        scene_description="Detective walks through rain-soaked alley",
        camera_angle="wide_shot",
        lighting="dramatic_noir",
        character_positions=[CharacterPosition("detective_jones", "center_frame", "walking_slowly")],
        duration=3,
        fps=8,
        resolution=f"{WIDTH}x{HEIGHT}",
    )
    try:
        with tempfile.TemporaryDirectory() as scratch:
            # The image is on loopback, which the SSRF guard refuses unless told otherwise.
            config = Config(data_dir=scratch, media=MediaConfig(), network=NetworkConfig(allow_private=True))
            async with aiohttp.ClientSession() as http:
                renderer = video.load_renderer(config, http)

                async def progress(_: float) -> None:
                    return None

                clip = generate_video.clip_request("example", data)
                path, _ = await video.render_clip(renderer, clip, Path(scratch), progress)
                frame = [ffmpeg.ffmpeg_exe(), "-loglevel", "error", "-y", "-ss", "1.5", "-i", str(path)]
                scale = ["-frames:v", "1", "-vf", "scale=320:180", str(target)]
                subprocess.run([*frame, *scale], check=True)
            print(clip.applied)
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(render(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images/animatic-noir.png")))
