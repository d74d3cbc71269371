"""The files taskd makes once in its data directory (its key and secrets), as another local user may have left them."""

from __future__ import annotations

import logging
import os

import pytest

from taskd.apikey import load_or_create
from taskd.files import read_kept


def test_a_kept_file_owned_by_another_user_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "api_key"
    path.write_text("planted-key-the-other-user-knows-0123456789\n")
    path.chmod(0o600)
    if path.stat().st_uid == 0:
        os.chown(path, 4243, -1)  # root's files are taken (a secrets mount): make it another user's
    monkeypatch.setattr(os, "geteuid", lambda: 4242)

    with pytest.raises(
        OSError, match=r"owned by uid \d+, not by taskd's user \(uid 4242\) or root"
    ) as raised:
        read_kept(path)

    assert raised.value.filename == str(path)


def test_taskd_running_as_root_takes_a_kept_file_of_the_data_directorys_owner(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    # An NFS export with root_squash: what taskd made as root is the anonymous user's, and so is
    # the directory; or a service user's data directory that root runs taskd on.
    data = tmp_path / "data"
    data.mkdir()
    made, _ = load_or_create([], data)
    if os.geteuid() == 0:
        os.chown(data, 65534, -1)
        os.chown(data / "api_key", 65534, -1)
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    assert load_or_create([], data)[0] == made


def test_a_kept_key_other_users_can_read_is_used_with_a_warning(tmp_path, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "api_key"
    path.write_text("k" * 43 + "\n")
    path.chmod(0o644)

    with caplog.at_level(logging.WARNING, logger="taskd.files"):
        keys, _ = load_or_create([], tmp_path)

    assert keys == ["k" * 43]
    assert [record.getMessage() for record in caplog.records] == [
        f"{path} can be read by other users (mode 0644): chmod 600 it; whoever read it holds what it holds"
    ]


def test_a_kept_key_its_own_group_can_write_is_used_with_a_warning(
    tmp_path, caplog: pytest.LogCaptureFixture
):
    # What Kubernetes makes of the file taskd made on the pod's start before, on a volume mounted
    # with an fsGroup: that group's, and 0660.
    made, _ = load_or_create([], tmp_path)
    path = tmp_path / "api_key"
    os.chown(path, -1, os.getegid())
    path.chmod(0o660)

    with caplog.at_level(logging.WARNING, logger="taskd.files"):
        keys, _ = load_or_create([], tmp_path)

    assert keys == made
    assert [record.getMessage() for record in caplog.records] == [
        f"{path} can be written by the users of its group (gid {os.getegid()}, mode 0660): chmod 600 it "
        "(a Kubernetes volume with an fsGroup: fsGroupChangePolicy OnRootMismatch); whoever wrote it "
        "chose what it holds"
    ]


def test_a_kept_file_a_group_taskd_is_not_in_can_write_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "api_key"
    path.write_text("k" * 43 + "\n")
    path.chmod(0o660)
    monkeypatch.setattr(os, "getegid", lambda: path.stat().st_gid + 1)
    monkeypatch.setattr(os, "getgroups", lambda: [])

    with pytest.raises(OSError, match=r"other users can write it \(mode 0660\)"):
        read_kept(path)


def test_a_key_taskd_made_is_read_again_without_a_warning(tmp_path, caplog: pytest.LogCaptureFixture):
    made = load_or_create([], tmp_path)

    with caplog.at_level(logging.WARNING, logger="taskd.files"):
        assert load_or_create([], tmp_path) == made

    assert caplog.records == []


def test_a_link_in_place_of_a_kept_file_made_by_another_user_is_refused(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    # The file it names is root's and every user may read it: only who made the link tells.
    target = tmp_path / "machine-id"
    target.write_text("0123456789abcdef0123456789abcdef\n")
    link = tmp_path / "api_key"
    link.symlink_to(target)
    if link.lstat().st_uid == 0:
        os.lchown(link, 4243, -1)  # root's links are followed (a secrets mount): make it another user's
    monkeypatch.setattr(os, "geteuid", lambda: 4242)

    with pytest.raises(OSError, match=r"it is a link made by uid \d+, not by taskd's user"):
        read_kept(link)


def test_a_link_put_in_place_of_a_kept_file_for_the_moment_of_each_open_is_refused(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    # Whoever can write the data directory swaps a link in between the link check and the open, and
    # the file back after it: the file the link names is what would be read.
    path = tmp_path / "api_key"
    path.write_text("k" * 43 + "\n")
    path.chmod(0o600)
    target = tmp_path / "machine-id"
    target.write_text("0123456789abcdef0123456789abcdef\n")
    real_open = os.open

    def swapped_for_each_open(name, flags, *args):
        aside = tmp_path / "aside"
        path.rename(aside)
        path.symlink_to(target)
        try:
            return real_open(name, flags, *args)
        finally:
            path.unlink()
            aside.rename(path)

    monkeypatch.setattr(os, "open", swapped_for_each_open)

    with pytest.raises(OSError, match="it was replaced while taskd opened it"):
        read_kept(path)


def test_a_kept_file_replaced_once_while_it_is_opened_is_read_as_it_is_now(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    # A secrets mount swapping its files, or another process putting a new key in place of an
    # empty file: the second read finds the new file whole.
    path = tmp_path / "api_key"
    path.write_text("old-" + "k" * 40 + "\n")
    real_open = os.open
    opens = 0

    def replaced_at_the_first_open(name, flags, *args):
        nonlocal opens
        opens += 1
        if opens == 1:
            (tmp_path / "new").write_text("new-" + "k" * 40 + "\n")
            (tmp_path / "new").chmod(0o600)
            (tmp_path / "new").rename(path)
        return real_open(name, flags, *args)

    monkeypatch.setattr(os, "open", replaced_at_the_first_open)

    assert read_kept(path) == b"new-" + b"k" * 40 + b"\n"
