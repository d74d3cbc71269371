"""The key taskd makes when none is configured: one per data directory, kept in its `api_key` file."""

from __future__ import annotations

import pytest

from taskd import apikey


def test_a_start_that_found_no_key_uses_the_one_another_made_meanwhile(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    # An API node and a worker started together on a new data dir: both looked before either wrote.
    first = apikey.load_or_create([], tmp_path)
    blind = iter([True])
    kept_key = apikey.kept_key
    monkeypatch.setattr(
        apikey, "kept_key", lambda data_dir: None if next(blind, False) else kept_key(data_dir)
    )

    second = apikey.load_or_create([], tmp_path)

    assert second == first
    assert (tmp_path / apikey.KEY_FILE).read_text().strip() == first[1]


def test_an_empty_key_file_counts_as_none_and_a_key_is_made(tmp_path):
    (tmp_path / apikey.KEY_FILE).write_text("")

    keys, made = apikey.load_or_create([], tmp_path)

    assert made is not None and keys == [made]
    assert (tmp_path / apikey.KEY_FILE).read_text().strip() == made


def test_configured_keys_make_no_file(tmp_path):
    assert apikey.load_or_create(["configured-key"], tmp_path) == (["configured-key"], None)
    assert not (tmp_path / apikey.KEY_FILE).exists()
