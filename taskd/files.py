"""Files made once and shared by every process of a data directory: its secrets and its API key."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Re-raise an OSError of the block with `path` as its file name.

    A write's error names no file (a full disk: "[Errno 28] No space left on device"); start-up
    says which file it could not make in one line, as it does for an open's error, from the name.
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


log = logging.getLogger("taskd.files")

# A kept key or secret is a line of under a hundred bytes; what is read of a file is bounded by this.
KEPT_FILE_LIMIT = 64 * 1024


def read_kept(path: Path) -> bytes:
    """What `path`, a file made by create_once, holds (at most KEPT_FILE_LIMIT bytes).

    OSError naming `path` for anything but a plain file: a FIFO put in its place would hold
    start-up for ever on the open or the read, a device would be read without end.
    """
    try:
        return _read_kept(path)
    except _Replaced:
        # Once more: a secrets mount that swapped its files just then, or another process that put a
        # new file in place of an empty one, is read whole the second time; a swap made to choose
        # the file read is caught again (_check_unchanged accepts only the file the name names).
        return _read_kept(path)


class _Replaced(OSError):
    """The name was replaced between its checks and its open (_check_unchanged)."""


def _read_kept(path: Path) -> bytes:
    checked = _check_link(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        status = os.fstat(fd)
        mode = status.st_mode
        if stat.S_ISDIR(mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a plain file (a FIFO, a device or a socket)", str(path))
        _check_unchanged(path, checked, status)
        _check_owner(path, status)
    except BaseException:
        os.close(fd)
        raise
    with naming(path), os.fdopen(fd, "rb") as kept:
        return kept.read(KEPT_FILE_LIMIT)


def _check_link(path: Path) -> os.stat_result | None:
    """Refuse a link in the data directory that another user made: it chooses the file taskd reads,
    one of root's that every user may read (a 32-digit /etc/machine-id as the API key) as well.
    A link of taskd's user or root's (to a secrets mount) is followed. What `path` is (lstat), or
    None when there is nothing there."""
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        return None  # the open says so, naming the file
    # Not the directory owner's (_trusted) when taskd runs as root: root would follow it to a file
    # only root may read, and print it as the API key (`--print-key`) or trust it.
    me = os.geteuid()
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (me, 0):
        raise OSError(
            errno.EPERM,
            f"it is a link made by uid {link.st_uid}, not by taskd's user (uid {me}) or root: whoever made "
            "it chooses the file taskd would trust; delete it (taskd makes a new one)",
            str(path),
        )
    return link


def _same(one: os.stat_result, other: os.stat_result) -> bool:
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def _check_unchanged(path: Path, checked: os.stat_result | None, opened: os.stat_result) -> None:
    """Refuse what was opened unless `path` still is what _check_link saw and still names it.

    Whoever can write the directory could otherwise put a link of their own in place of the file
    for the moment between the check and the open, and the file's old name back after it: the
    link chooses the file read, past the check.
    """
    try:
        # Made between the check and the open (a process starting beside this one): checked now.
        now = _check_link(path) if checked is None else os.lstat(path)
        unchanged = (
            now is not None and (checked is None or _same(now, checked)) and _same(path.stat(), opened)
        )
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        raise _Replaced(
            errno.EAGAIN,
            "it was replaced while taskd opened it (a link put in its place for a moment?); start again, "
            "and see who else can write the data directory",
            str(path),
        )


def _trusted(uid: int, path: Path) -> bool:
    """Whether a file in the data directory owned by `uid` may be taken: taskd's user's or
    root's, and, when taskd runs as root, the directory's owner's. That user can replace any file
    there at will, so refusing theirs protects from no one, and on an NFS export with root_squash
    (the default) what taskd makes as root is the anonymous user's, the directory's owner's."""
    me = os.geteuid()
    if uid in (me, 0):
        return True
    if me != 0:
        return False
    try:
        return os.stat(path.parent).st_uid == uid
    except OSError:
        return False


def _check_owner(path: Path, status: os.stat_result) -> None:
    """Refuse a kept file that another user controls.

    Whoever can write the file chooses the key or secret taskd then trusts: its owner (who can
    chmod it at will) or anyone its mode lets write. taskd makes its files 0600, so such a file was
    made or changed by someone else, a local user who knew the data directory before taskd's first
    start, say. Root's files are taken (a secrets mount, linked into the data directory, is root's
    and often 0644), and by taskd running as root the directory owner's (_trusted); the loaders warn of one other users can read (warn_if_readable). So is one
    that only a group of taskd's own can write, with a warning: Kubernetes gives every file of a
    volume mounted with an fsGroup to that group, group-writable (0660), at each start of the pod,
    the files taskd made on the start before included.
    """
    if not _trusted(status.st_uid, path):
        raise OSError(
            errno.EPERM,
            f"it is owned by uid {status.st_uid}, not by taskd's user (uid {os.geteuid()}) or root: whoever "
            "owns it chooses the key or secret taskd would trust; delete it (taskd makes a new one) or chown it",
            str(path),
        )
    if status.st_mode & 0o002 or (status.st_mode & 0o020 and status.st_gid not in _own_groups()):
        raise OSError(
            errno.EPERM,
            f"other users can write it (mode {stat.S_IMODE(status.st_mode):04o}): they choose the key or "
            "secret taskd would trust; delete it (taskd makes a new one) or chmod 600 it",
            str(path),
        )


def _own_groups() -> set[int]:
    # The groups taskd's process is in: its own, and a Kubernetes pod's fsGroup.
    return {os.getegid(), *os.getgroups()}


def check_data_dir(path: Path) -> None:
    """Make the data directory (0700) when it is missing, then refuse it when another user controls
    it or a folder above it.

    Whoever can replace the directory, or anything in it, chooses what taskd trusts there: the
    kept key and secrets, the embedded Valkey's password and its config (which names modules the
    server loads, as taskd's user). So each folder whose entries lead to it, from the root down, its
    link-free path's and the path's as written (a link's folder names where it leads), must be of
    the users _trusted takes kept files from, and writable by no other user: not by everyone, nor by
    a group taskd's process is not in (a Kubernetes fsGroup is one it is in). A folder above with
    the sticky bit may be (/tmp: nobody renames or deletes another's entries there); the data
    directory itself may not: whoever could add to it would make its `valkey/` first.
    """
    path = Path(os.path.abspath(path))
    # Before the mkdir, which follows them: taskd as root would make a folder where one leads.
    _check_links_on_path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # And after it: a link made in a missing folder's place meanwhile chose where the rest was made.
    _check_links_on_path(path)
    real = path.resolve()
    owner = os.stat(real).st_uid
    for folder in dict.fromkeys([real, *real.parents, path, *path.parents]):
        # Every user may add to a folder everyone can write (/tmp, sticky): an entry there that is
        # not root's or taskd's user's was made by another user, whom taskd as root must not take
        # for the data directory's owner (_check_folder), or they would choose all it trusts.
        trusted = os.geteuid() if os.stat(folder.parent).st_mode & 0o002 else owner
        _check_folder(folder, os.stat(folder), trusted, sticky_will_do=folder not in (real, path))


def _check_links_on_path(path: Path) -> None:
    """Refuse a link on the data directory's path as written that another user made: in a folder
    whose sticky bit lets them replace it (/tmp), they choose the directory each start uses."""
    for entry in (path, *path.parents):
        _check_link_on_path(entry)


def _check_link_on_path(entry: Path) -> None:
    try:
        status = os.lstat(entry)
    except FileNotFoundError:
        return  # not there yet: check_data_dir looks again once it has made it
    me = os.geteuid()
    if stat.S_ISLNK(status.st_mode) and status.st_uid not in (me, 0):
        raise OSError(
            errno.EPERM,
            f"it is a link made by uid {status.st_uid}, not by taskd's user (uid {me}) or root: whoever "
            "made it chooses the data directory taskd would use; give taskd the path it leads to, or a "
            "data_dir of its own",
            str(entry),
        )


def check_folder_in(folder: Path, data_dir: Path) -> None:
    """Refuse a folder of the data directory that another user owns or can write, as check_data_dir
    refuses the data directory: one made while the data directory was open to them, before taskd
    checked it (its `valkey/`, with a password they know)."""
    _check_folder(folder, os.stat(folder), os.stat(data_dir).st_uid, sticky_will_do=False)


def _check_folder(folder: Path, status: os.stat_result, data_owner: int, *, sticky_will_do: bool) -> None:
    me = os.geteuid()
    # As root, the data directory's owner is trusted as _trusted trusts its files (root_squash NFS).
    if status.st_uid not in (me, 0) and not (me == 0 and status.st_uid == data_owner):
        raise OSError(
            errno.EPERM,
            f"it is owned by uid {status.st_uid}, not by taskd's user (uid {me}) or root: whoever owns "
            "it can replace the data directory's files, and choose the keys and secrets taskd would "
            "trust; chown it, or give taskd a data_dir of its own",
            str(folder),
        )
    mode = status.st_mode
    writable = mode & 0o002 or (mode & 0o020 and status.st_gid not in _own_groups())
    if writable and not (sticky_will_do and mode & stat.S_ISVTX):
        raise OSError(
            errno.EPERM,
            f"other users can write it (mode {stat.S_IMODE(mode):04o}): they can replace the data "
            "directory's files, and choose the keys and secrets taskd would trust; chmod go-w it, or "
            "give taskd a data_dir of its own",
            str(folder),
        )


_warned: set[Path] = set()


def warn_if_readable(path: Path) -> None:
    """Warn, once a process, when users other than its owner may read (or its group write) the key
    or secret in `path`, which was just taken (each task that reads a media link reads the media secret again)."""
    if path in _warned:
        return
    with contextlib.suppress(OSError):  # read a moment ago; nothing to say of a file gone since
        status = path.stat()
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o020:  # a group of taskd's own (_check_owner refuses any other's)
            _warned.add(path)
            log.warning(
                "%s can be written by the users of its group (gid %d, mode %04o): chmod 600 it (a "
                "Kubernetes volume with an fsGroup: fsGroupChangePolicy OnRootMismatch); whoever "
                "wrote it chose what it holds",
                path,
                status.st_gid,
                mode,
            )
        elif mode & 0o044:
            _warned.add(path)
            log.warning(
                "%s can be read by other users (mode %04o): chmod 600 it; whoever read it holds what it holds",
                path,
                mode,
            )


def create_once(path: Path, content: bytes) -> bool:
    """Put `content` at `path` (owner-only, on disk) unless a file is there already; True if this
    call put it there.

    Written aside, then hard-linked into place: no process ever reads half of it, and of processes
    starting together on one data directory the first link wins and every one reads that file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with naming(path), os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(aside, path)
        except FileExistsError:
            return False
        return True
    finally:
        aside.unlink(missing_ok=True)
