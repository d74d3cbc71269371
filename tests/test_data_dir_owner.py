"""The data directory and the folders above it, as another local user may have made or left them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taskd.embedded import EmbeddedValkey
from taskd.files import check_data_dir

OTHER_USER = 4243


def _others(path: Path) -> None:
    """`path` made another user's (root's is trusted, as taskd's user's is)."""
    os.chown(path, OTHER_USER, -1)


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """taskd run by an ordinary user (uid 4242); the tests themselves may run as root."""
    monkeypatch.setattr(os, "geteuid", lambda: 4242)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder another user's needs root")
def test_a_data_dir_another_user_made_is_refused(tmp_path, as_user):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    _others(data)

    with pytest.raises(
        OSError, match=rf"owned by uid {OTHER_USER}, not by taskd's user \(uid 4242\) or root"
    ) as raised:
        check_data_dir(data)

    assert raised.value.filename == str(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder another user's needs root")
def test_a_data_dir_in_a_folder_another_user_owns_is_refused(tmp_path, as_user):
    # Its owner can rename the data directory away and put one of their own in its place.
    above = tmp_path / "shared"
    above.mkdir(mode=0o755)
    _others(above)

    with pytest.raises(OSError, match=rf"owned by uid {OTHER_USER}") as raised:
        check_data_dir(above / "data")

    assert raised.value.filename == str(above)


def test_a_data_dir_other_users_can_write_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)

    with pytest.raises(OSError, match=r"other users can write it \(mode 0777\)") as raised:
        check_data_dir(data)

    assert raised.value.filename == str(data)


def test_a_data_dir_other_users_can_write_is_refused_with_the_sticky_bit_too(tmp_path):
    # They could make its valkey/ folder, with a config of theirs, before taskd's first start.
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o1777)

    with pytest.raises(OSError, match=r"other users can write it \(mode 1777\)"):
        check_data_dir(data)


def test_a_data_dir_in_a_folder_other_users_can_write_is_refused(tmp_path):
    above = tmp_path / "shared"
    above.mkdir()
    above.chmod(0o777)

    with pytest.raises(OSError, match=r"other users can write it \(mode 0777\)") as raised:
        check_data_dir(above / "data")

    assert raised.value.filename == str(above)


def test_a_data_dir_in_a_sticky_folder_every_user_can_write_is_used(tmp_path):
    # /tmp: nobody renames or deletes another user's entries there.
    above = tmp_path / "tmp"
    above.mkdir()
    above.chmod(0o1777)

    check_data_dir(above / "data")

    assert (above / "data").is_dir()


def test_a_link_to_the_data_dir_in_a_folder_other_users_can_write_is_refused(tmp_path):
    # Whoever can write the link's folder chooses where the link leads.
    (tmp_path / "data").mkdir(mode=0o700)
    links = tmp_path / "links"
    links.mkdir()
    (links / "data").symlink_to(tmp_path / "data")
    links.chmod(0o777)

    with pytest.raises(OSError, match=r"other users can write it \(mode 0777\)") as raised:
        check_data_dir(links / "data")

    assert raised.value.filename == str(links)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a link another user's needs root")
def test_a_link_to_the_data_dir_another_user_made_in_a_sticky_folder_is_refused(tmp_path, as_user):
    # /tmp's sticky bit lets the link's maker replace it: they choose the data dir of each start.
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "taskd").symlink_to(tmp_path / "chosen" / "data")
    os.lchown(shared / "taskd", OTHER_USER, -1)

    with pytest.raises(OSError, match=rf"a link made by uid {OTHER_USER}, not by taskd's user") as raised:
        check_data_dir(shared / "taskd")

    assert raised.value.filename == str(shared / "taskd")
    assert not (tmp_path / "chosen").exists()  # no folder made where it leads


@pytest.mark.skipif(os.geteuid() != 0, reason="making a link another user's needs root")
def test_a_link_another_user_makes_on_the_path_while_the_data_dir_is_made_is_refused(
    tmp_path, as_user, monkeypatch: pytest.MonkeyPatch
):
    # The missing /tmp/taskd, checked and found absent, made a link to a folder of their choice
    # just before taskd's mkdir makes the rest of the path.
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    (tmp_path / "chosen").mkdir()
    mkdir = Path.mkdir

    def raced(self: Path, *args, **kwargs) -> None:
        if not (shared / "taskd").is_symlink():
            (shared / "taskd").symlink_to(tmp_path / "chosen")
            os.lchown(shared / "taskd", OTHER_USER, -1)
        mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", raced)

    with pytest.raises(OSError, match=rf"a link made by uid {OTHER_USER}, not by taskd's user") as raised:
        check_data_dir(shared / "taskd" / "data")

    assert raised.value.filename == str(shared / "taskd")


def test_a_missing_data_dir_is_made_for_taskds_user_alone(tmp_path):
    check_data_dir(tmp_path / "new" / "data")

    assert (tmp_path / "new" / "data").stat().st_mode & 0o777 == 0o700


def test_a_data_dir_only_a_group_of_taskds_own_can_write_is_used(tmp_path):
    # A Kubernetes volume mounted with an fsGroup: that group's, group-writable, setgid.
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, -1, os.getegid())
    data.chmod(0o2770)

    check_data_dir(data)


def test_a_data_dir_a_group_taskd_is_not_in_can_write_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o770)
    monkeypatch.setattr(os, "getegid", lambda: data.stat().st_gid + 1)
    monkeypatch.setattr(os, "getgroups", lambda: [])

    with pytest.raises(OSError, match=r"other users can write it \(mode 0770\)"):
        check_data_dir(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder another user's needs root")
def test_taskd_running_as_root_uses_a_data_dir_of_another_user(tmp_path):
    # An NFS export with root_squash: what taskd made as root is the anonymous user's, the data
    # directory and the export's folder too; as root taskd trusts the data directory's owner.
    export = tmp_path / "export"
    (export / "data").mkdir(parents=True, mode=0o700)
    export.chmod(0o755)
    _others(export)
    _others(export / "data")

    check_data_dir(export / "data")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder another user's needs root")
def test_taskd_running_as_root_refuses_a_data_dir_another_user_made_in_a_folder_everyone_can_write(tmp_path):
    # /tmp: anyone may make the data directory there before taskd's first start; as root, taskd
    # took its owner for the root_squash owner of the test above, and all its files with it.
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    data = shared / "data"
    data.mkdir(mode=0o700)
    _others(data)

    with pytest.raises(
        OSError, match=rf"owned by uid {OTHER_USER}, not by taskd's user \(uid 0\) or root"
    ) as raised:
        check_data_dir(data)

    assert raised.value.filename == str(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder another user's needs root")
async def test_an_embedded_valkey_folder_another_user_made_is_refused(tmp_path):
    # Made while the data directory was open to them: taskd as root would chmod it 0700 and use it,
    # with the password they left there.
    valkey = tmp_path / "data" / "valkey"
    valkey.mkdir(parents=True, mode=0o700)
    _others(valkey)
    server = EmbeddedValkey(tmp_path / "data")

    with pytest.raises(OSError, match=rf"owned by uid {OTHER_USER}, not by taskd's user") as raised:
        await server.start()

    assert raised.value.filename == str(valkey)
    assert server.pid is None


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file another user's needs root")
async def test_an_embedded_valkey_password_another_user_made_is_refused(tmp_path):
    valkey = tmp_path / "data" / "valkey"
    valkey.mkdir(parents=True, mode=0o700)
    (valkey / "password").write_text("the-other-users-password\n")
    (valkey / "password").chmod(0o600)
    _others(valkey / "password")
    server = EmbeddedValkey(tmp_path / "data")

    with pytest.raises(OSError, match=rf"owned by uid {OTHER_USER}, not by taskd's user") as raised:
        await server.start()

    assert raised.value.filename == str(valkey / "password")
    assert server.pid is None
