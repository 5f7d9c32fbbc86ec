"""Local files below a trusted root, handled as untrusted: whoever may write into ``output_path`` may
have put a symbolic link, a FIFO or a huge file where VibeDream reads or writes.

The root (the deployment's ``output_path``) is opened as configured: it and its parents may be links
the deployment made (a mounted volume, a path kept stable across releases), and those are followed.
Below it, every folder is opened from its parent's descriptor with ``O_NOFOLLOW``, one component at
a time, and ``..`` is refused; no path is resolved again between a check and a use, so a link
swapped in after a check is refused too. Then:

- a read opens only a regular file (``O_NONBLOCK``, so a FIFO never blocks the open; ``fstat``
  refuses anything but a regular file) and reads at most a given number of bytes;
- a write creates missing folders one at a time (``mkdirat``), writes a new hidden temporary
  (``O_CREAT | O_EXCL | O_NOFOLLOW``) and publishes it with ``renameat`` (which replaces a link
  found at the final name, never writes through it) or ``linkat`` (which fails if the name exists);
- a listing names regular files only.

A link, or another kind of file, where a folder or a regular file is expected is refused with
:class:`~airflow_vibedream.errors.UnsafeLocalPathError`: nothing is written to, or read from, the
link's target. (The gallery reads its files the same way: ``plugins/sources.py``.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from airflow_vibedream.errors import UnsafeLocalPathError

_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FOLDER_FLAGS = _ROOT_FLAGS | os.O_NOFOLLOW
# O_NONBLOCK: opening a FIFO must not wait for a writer (a regular file ignores it); O_NOCTTY: a
# terminal never becomes the worker's.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: What ``open`` answers for a link with ``O_NOFOLLOW`` (ELOOP; EMLINK on the BSDs), for a
#: non-folder opened as a folder (ENOTDIR) and for a socket (ENXIO).
_REFUSED_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK, errno.ENOTDIR, errno.ENXIO})


def parts_of(relative: str) -> list[str]:
    """The components of ``relative`` (``/``-separated; empty and ``.`` components dropped).

    :raises ValueError: it is empty, absolute in effect, or has a ``..`` component.
    """
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"Not a name below a folder: {relative!r}")
    return parts


def _what(directory: int, name: str) -> str:
    """What ``name`` is, in a few words (for an error; never its content)."""
    try:
        mode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
    except OSError:
        return "cannot be opened"
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if stat.S_ISDIR(mode):
        return "is a folder"
    if stat.S_ISREG(mode):
        return "is a file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO"
    return "is a device or socket"


def _refusal(root: Path, parts: Sequence[str], reason: str) -> UnsafeLocalPathError:
    path = str(root.joinpath(*parts))
    return UnsafeLocalPathError(
        f"{path} {reason}: below {root}, VibeDream opens only real folders and regular files and never "
        "follows a symbolic link, so nothing is read from or written to it (remove it; output_path "
        "itself may be a link)",
        path=path,
        reason=reason,
    )


def _open_root(root: Path, *, create: bool) -> int:
    if create:
        # The deployment's own path: links in it (or above it) are the deployment's and followed.
        os.makedirs(root, exist_ok=True)
    return os.open(root, _ROOT_FLAGS)


def _open_below(root: Path, parts: Sequence[str], directory: int, *, create: bool) -> int:
    """The folder ``parts[-1]`` in ``directory`` (which is ``root/parts[:-1]``), never a link."""
    name = parts[-1]
    for attempt in (1, 2):
        try:
            return os.open(name, _FOLDER_FLAGS, dir_fd=directory)
        except FileNotFoundError:
            if not create or attempt == 2:
                raise
        except OSError as exc:
            if exc.errno in _REFUSED_ERRNOS:
                raise _refusal(root, parts, _what(directory, name)) from None
            raise
        # Made here; if another task made it (or a link was swapped in) meanwhile, the open decides.
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o777, dir_fd=directory)
    raise AssertionError("unreachable: the second attempt returns or raises")


def open_folder(root: Path, parts: Sequence[str], *, create: bool) -> int:
    """A descriptor of the folder ``root/parts`` (the caller closes it), every component below
    ``root`` opened without following a link; created when missing if ``create``.

    :raises FileNotFoundError: a component is missing (and not ``create``).
    :raises UnsafeLocalPathError: a component below ``root`` is a link or not a folder.
    """
    directory = _open_root(root, create=create)
    try:
        for depth in range(len(parts)):
            below = _open_below(root, parts[: depth + 1], directory, create=create)
            os.close(directory)
            directory = below
    except BaseException:
        os.close(directory)
        raise
    return directory


def read_file(root: Path, relative: str, max_bytes: int) -> bytes | None:
    """The bytes of the regular file ``root/relative``; None when it (or a folder on its way) does
    not exist.

    :param root: the trusted folder (links in its own path are followed).
    :param relative: the file's name below ``root``.
    :param max_bytes: the most bytes read: a larger file is refused, not cut.
    :raises UnsafeLocalPathError: a link, a FIFO, a folder or a device on the way or at the name,
        or a file larger than ``max_bytes``.
    """
    parts = parts_of(relative)
    try:
        directory = open_folder(root, parts[:-1], create=False)
    except FileNotFoundError:
        return None
    try:
        descriptor = os.open(parts[-1], _READ_FLAGS, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in _REFUSED_ERRNOS:
            raise _refusal(root, parts, _what(directory, parts[-1])) from None
        raise
    finally:
        os.close(directory)
    with os.fdopen(descriptor, "rb") as handle:
        facts = os.fstat(handle.fileno())
        if not stat.S_ISREG(facts.st_mode):
            raise _refusal(root, parts, "is not a regular file")
        if facts.st_size > max_bytes:
            raise _refusal(root, parts, f"is larger than {max_bytes} bytes")
        data = handle.read(max_bytes + 1)  # it may have grown since the fstat
    if len(data) > max_bytes:
        raise _refusal(root, parts, f"is larger than {max_bytes} bytes")
    return data


def write_file(
    root: Path,
    relative: str,
    write: Callable[[IO[bytes]], None],
    *,
    exclusive: bool = False,
    suffix: str = ".tmp",
) -> bool:
    """Write ``root/relative`` atomically: ``write`` fills a new hidden temporary beside it, which is
    then published (renamed into place; with ``exclusive``, linked only if the name is free). If
    ``write`` raises, nothing is published and the temporary is removed.

    :param root: the trusted folder (created when missing; links in its own path are followed).
    :param relative: the file's name below ``root``; missing folders on the way are created.
    :param write: fills the temporary's handle (and may check what it wrote: raising stops it).
    :param exclusive: publish only if nothing has the name (else return False).
    :param suffix: the temporary's suffix (``.partial`` for outputs: say what it is to a person).
    :returns: True when published (always, unless ``exclusive`` found the name taken).
    :raises UnsafeLocalPathError: a folder on the way is a link or not a folder.
    """
    parts = parts_of(relative)
    name = parts[-1]
    directory = open_folder(root, parts[:-1], create=True)
    temporary = f".{name}.{uuid.uuid4().hex}{suffix}"
    try:
        handle = os.fdopen(os.open(temporary, _CREATE_FLAGS, 0o666, dir_fd=directory), "wb")
        try:
            with handle:
                write(handle)
            if not exclusive:
                # renameat replaces whatever has the name, a link included, and never follows it.
                os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
                return True
            try:
                # linkat: atomic, fails if the name exists (a link there too: it counts as taken).
                os.link(temporary, name, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=directory)
    finally:
        os.close(directory)


def remove_file(root: Path, relative: str) -> None:
    """Remove the name ``root/relative`` (a link there is removed itself); nothing if missing.

    :raises UnsafeLocalPathError: a folder on the way is a link or not a folder.
    """
    parts = parts_of(relative)
    try:
        directory = open_folder(root, parts[:-1], create=False)
    except FileNotFoundError:
        return
    try:
        os.unlink(parts[-1], dir_fd=directory)
    except FileNotFoundError:
        pass
    finally:
        os.close(directory)


def regular_files(root: Path, folder: str) -> tuple[list[str], int]:
    """(the names of the regular files directly in ``root/folder``, how many other names it has:
    links, FIFOs, folders...). Nothing when the folder does not exist.

    :raises UnsafeLocalPathError: the folder, or one on its way, is a link or not a folder.
    """
    try:
        directory = open_folder(root, parts_of(folder), create=False)
    except FileNotFoundError:
        return [], 0
    names: list[str] = []
    others = 0
    try:
        # scandir works on a duplicate of the descriptor; is_file(follow_symlinks=False) is true for
        # a regular file only (from the listing's own type, else an fstatat that follows nothing).
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    names.append(entry.name)
                else:
                    others += 1
    finally:
        os.close(directory)
    return names, others
