"""generate_image and generate_character_voice against loopback fakes, and espeak-ng when installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import attrs
import orjson
import pytest
from fake_media_apis import FakeImagesAPI, FakeSpeechAPI, OversizedAPI, make_ctx, sine_wav

from taskd.config import Config, ImageProvider, MediaConfig, NetworkConfig, ProvidersConfig, SpeechProvider
from taskd.media.store import MediaStore
from taskd.providers.http import JSON_REPLY_LIMIT
from taskd.providers.images import MAX_REVISED_PROMPT_CHARS
from taskd.tasks.builtin import generate_character_voice, generate_image
from taskd.tasks.builtin.generate_character_voice import GenerateCharacterVoiceInput
from taskd.tasks.builtin.generate_image import GenerateImageInput
from taskd.tasks.spec import TaskError

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)


def config_for(tmp_path: Path, **providers: object) -> Config:
    media = MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch"))
    # The fakes are on loopback.
    network = NetworkConfig(allow_private=True)
    return Config(
        data_dir=str(tmp_path / "data"), media=media, providers=ProvidersConfig(**providers), network=network
    )


def stored_file(config: Config, media_url: str) -> Path:
    return MediaStore.from_config(config).root / media_url.split("?")[0].removeprefix(
        "http://media.test/media/"
    )


# generate_image


@pytest.mark.parametrize("as_url", [False, True], ids=["b64_json", "url"])
async def test_image_from_the_api_is_stored_and_measured(tmp_path, http, as_url):
    async with FakeImagesAPI(as_url=as_url) as api:
        config = config_for(
            tmp_path, image=ImageProvider(base_url=api.base_url, api_key="sk-img", model="gpt-image-1")
        )
        ctx, _ = make_ctx(http, config)
        data = GenerateImageInput(
            prompt="1920s detective",
            character_id="detective_jones",
            pose="standing_confident",
            reference_images=["https://media.example/ref1.jpg"],
            resolution="1024x1536",
            quality="hd",
        )

        result = await generate_image.run(ctx, data)

    auth, body = api.requests[0]
    assert auth == "Bearer sk-img"
    assert (body["model"], body["size"], body["quality"], body["n"]) == (
        "gpt-image-1",
        "1024x1536",
        "high",
        1,
    )
    assert "Character: detective jones." in body["prompt"] and "Pose: standing confident." in body["prompt"]
    assert "Reference images: https://media.example/ref1.jpg" in body["prompt"]
    meta = result["metadata"]
    assert (meta["resolution"], meta["format"], meta["generation_model"]) == ("32x32", "png", "gpt-image-1")
    assert stored_file(config, result["media_url"]).read_bytes() == api.image
    assert meta["revised_prompt"].startswith("revised: ")


async def test_a_revised_prompt_longer_than_any_prompt_is_cut_not_stored_whole(tmp_path, http):
    async with FakeImagesAPI() as api:
        api.revised_prompt = "x" * 2_000_000
        config = config_for(tmp_path, image=ImageProvider(base_url=api.base_url))
        ctx, _ = make_ctx(http, config)

        result = await generate_image.run(ctx, GenerateImageInput(prompt="a lighthouse"))

    assert result["metadata"]["revised_prompt"] == "x" * (MAX_REVISED_PROMPT_CHARS - 1) + "…"


async def test_dalle3_quality_is_mapped_to_standard_or_hd(tmp_path, http):
    async with FakeImagesAPI() as api:
        config = config_for(tmp_path, image=ImageProvider(base_url=api.base_url, model="dall-e-3"))
        ctx, _ = make_ctx(http, config)
        await generate_image.run(ctx, GenerateImageInput(prompt="x", quality="medium"))
    assert api.requests[0][1]["quality"] == "standard"


async def test_image_provider_error_is_reported(tmp_path, http):
    async with FakeImagesAPI(fail=400) as api:
        ctx, _ = make_ctx(http, config_for(tmp_path, image=ImageProvider(base_url=api.base_url)))
        with pytest.raises(TaskError, match="Image provider returned HTTP 400: fake image failure 400"):
            await generate_image.run(ctx, GenerateImageInput(prompt="x"))


async def test_an_image_answer_over_the_limit_fails_without_being_read_in_full(tmp_path, http):
    # JSON around the base64 of an image of media.max_download_bytes (1024 here).
    limit = JSON_REPLY_LIMIT + 1024 * 4 // 3
    async with OversizedAPI(b'{"data": [{"b64_json": "', 2 * limit) as api:
        config = config_for(tmp_path, image=ImageProvider(base_url=f"{api.url}/v1"))
        config = attrs.evolve(config, media=attrs.evolve(config.media, max_download_bytes=1024))
        ctx, _ = make_ctx(http, config)
        with pytest.raises(TaskError, match=f"^Image provider sent a reply larger than {limit} bytes$"):
            await generate_image.run(ctx, GenerateImageInput(prompt="x"))
    assert api.sent < 2 * limit


async def test_image_without_a_provider_says_how_to_configure_one(tmp_path, http):
    ctx, _ = make_ctx(http, config_for(tmp_path))
    with pytest.raises(TaskError, match=r"No image provider configured: set providers\.image\.base_url"):
        await generate_image.run(ctx, GenerateImageInput(prompt="x"))


# generate_character_voice


async def test_voice_from_the_speech_api_with_pace_and_built_in_rain(tmp_path, http):
    async with FakeSpeechAPI() as api:
        provider = SpeechProvider(
            base_url=api.base_url, api_key="sk-tts", model="gpt-4o-mini-tts", voice="alloy"
        )
        config = config_for(tmp_path, speech=provider)
        ctx, _ = make_ctx(http, config)
        data = GenerateCharacterVoiceInput(
            text="I've been expecting you.",
            emotion="mysterious",
            pace="slow",
            background_noise="rain_ambience",
            output_format="wav",
            sample_rate=22050,
        )

        result = await generate_character_voice.run(ctx, data)

    _, body = api.requests[0]
    assert body["voice"] == "alloy" and body["speed"] == 0.85 and body["input"] == "I've been expecting you."
    assert body["instructions"] == "Speak in a mysterious tone."
    meta = result["metadata"]
    assert (meta["sample_rate"], meta["channels"], meta["format"]) == (22050, 1, "wav")
    assert meta["duration"] == pytest.approx(1.5, abs=0.1)  # as long as the speech, not the endless rain
    assert meta["generation_model"] == "gpt-4o-mini-tts"
    assert stored_file(config, result["media_url"]).stat().st_size == meta["file_size"]
    assert not list((tmp_path / "scratch").iterdir())


async def test_a_speech_answer_over_the_download_limit_fails_and_nothing_is_stored(tmp_path, http):
    async with OversizedAPI(sine_wav(0.1), 4 * 2**20, "audio/wav") as api:
        config = config_for(tmp_path, speech=SpeechProvider(base_url=f"{api.url}/v1"))
        config = attrs.evolve(config, media=attrs.evolve(config.media, max_download_bytes=2**20))
        ctx, _ = make_ctx(http, config)
        with pytest.raises(TaskError, match=r"^Speech provider sent a reply larger than 1048576 bytes$"):
            await generate_character_voice.run(ctx, GenerateCharacterVoiceInput(text="Hello."))
    assert not list((tmp_path / "scratch").iterdir())
    assert not (tmp_path / "data" / "media").exists() or not any((tmp_path / "data" / "media").rglob("*.*"))


async def test_voice_profile_url_picks_the_api_voice(tmp_path, http, files):
    profile = files.add(
        "detective.json", orjson.dumps({"voice": "onyx", "espeak_voice": "en-gb"}), "application/json"
    )
    async with FakeSpeechAPI() as api:
        config = config_for(tmp_path, speech=SpeechProvider(base_url=api.base_url, model="tts-1"))
        ctx, _ = make_ctx(http, config)
        await generate_character_voice.run(
            ctx, GenerateCharacterVoiceInput(text="Hi", character_voice_profile=profile, emotion="sad")
        )
    assert api.requests[0][1]["voice"] == "onyx"
    assert "instructions" not in api.requests[0][1]  # tts-1 takes none


async def test_no_engine_is_a_clear_error(tmp_path, http, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda _: None)
    ctx, _ = make_ctx(http, config_for(tmp_path))
    with pytest.raises(TaskError, match=r"No speech engine available: .* install espeak-ng"):
        await generate_character_voice.run(ctx, GenerateCharacterVoiceInput(text="Hi"))


async def test_voice_mixes_an_earlier_steps_stored_audio_read_from_the_store(tmp_path, http):
    source = tmp_path / "hum.wav"
    source.write_bytes(sine_wav(0.5, 60, 0.2))
    async with FakeSpeechAPI() as api:
        config = config_for(tmp_path, speech=SpeechProvider(base_url=api.base_url))
        # A media_url at http://media.test, which resolves nowhere: only the store can answer it.
        noise = MediaStore.from_config(config).put("proj-1", "audio_earlier.wav", source).url
        ctx, _ = make_ctx(http, config)
        data = GenerateCharacterVoiceInput(
            text="Nobody walks here.", background_noise=noise, output_format="wav"
        )

        result = await generate_character_voice.run(ctx, data)

    assert result["metadata"]["duration"] == pytest.approx(1.5, abs=0.1)


@needs_espeak
async def test_espeak_speech_as_mp3_with_a_background_file(tmp_path, http, files):
    noise = files.add("hum.wav", sine_wav(0.5, 60, 0.2))
    config = config_for(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateCharacterVoiceInput(
        text="I have been expecting you, detective.",
        emotion="angry",
        pace="fast",
        background_noise=noise,
        output_format="mp3",
        sample_rate=44100,
    )

    result = await generate_character_voice.run(ctx, data)

    meta = result["metadata"]
    assert meta["generation_model"] == "espeak-ng"
    assert (meta["sample_rate"], meta["format"]) == (44100, "mp3")
    assert 0.8 < meta["duration"] < 6  # longer than the looped 0.5 s background
    assert meta["loudness_lufs"] is not None
    assert result["media_url"].startswith("http://media.test/media/proj-1/voice_task-1.mp3?")


@needs_espeak
async def test_espeak_unknown_voice_is_reported(tmp_path, http, files):
    profile = files.add("p.json", b'{"espeak_voice": "nosuchvoice"}', "application/json")
    ctx, _ = make_ctx(http, config_for(tmp_path))
    with pytest.raises(TaskError, match=r"espeak-ng failed \(exit 1\): .*voice does not exist"):
        await generate_character_voice.run(
            ctx, GenerateCharacterVoiceInput(text="Hi", character_voice_profile=profile)
        )
