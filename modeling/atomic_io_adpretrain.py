"""Write a whole folder so that readers only ever see the old one or the new one.

``replace_folder(target, write)`` lets ``write(tmp)`` fill a fresh hidden sibling folder, flushes
it to disk, and swaps it in with one rename: on Linux ``renameat2(RENAME_EXCHANGE)`` exchanges
the two folders atomically; elsewhere (or on a file system without it) two renames leave a short
window in which ``target`` does not exist, and :func:`missing_folder_hint` turns that window into
a clear error for loaders. A process killed at any point leaves either the old folder or the new
one under ``target``; its leftovers are hidden siblings named ``.<name>.adpretrain-<tmp|old>-<pid>-<id>``
that the next save removes (and no loader ever opens).

Files the old folder held and ``write`` did not produce do not survive, except entries that
``keep`` marks as not being part of what ``write`` produces (e.g. a training run's ``logs/`` next
to its checkpoint): those are carried into the new folder as hard links (copies where links fail).

Part of the remote-code bundle: standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import uuid
from typing import Callable, Optional

TEMP_TAG = "adpretrain-tmp"
OLD_TAG = "adpretrain-old"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NO_EXCHANGE_ERRNOS = (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM)


def _sibling(target: str, tag: str) -> str:
    parent, name = os.path.split(target)
    return os.path.join(parent, f".{name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _leftovers(target: str) -> list[tuple[str, int]]:
    """``(path, pid)`` of hidden siblings an earlier save of ``target`` left behind."""
    parent, name = os.path.split(target)
    found = []
    for entry in os.listdir(parent or "."):
        for tag in (TEMP_TAG, OLD_TAG):
            prefix = f".{name}.{tag}-"
            if entry.startswith(prefix):
                pid = entry[len(prefix):].split("-")[0]
                found.append((os.path.join(parent, entry), int(pid) if pid.isdigit() else -1))
    return found


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers are never in use: this call is the only save here
    if os.name == "nt":  # os.kill would terminate the process there: keep others' leftovers
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return pid > 0


def clean_leftovers(target: str) -> None:
    """Remove temporaries of earlier, interrupted saves of ``target`` (not those of live savers)."""
    for path, pid in _leftovers(os.path.abspath(target)):
        if not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def missing_folder_hint(path: str) -> Optional[str]:
    """When ``path`` is absent because a save was interrupted mid-swap: a one-line explanation."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) or not os.path.isdir(os.path.dirname(path)):
        return None
    olds = [p for p, _ in _leftovers(path) if f".{OLD_TAG}-" in os.path.basename(p)]
    if not olds:
        return None
    return (
        f"checkpoint folder {path} does not exist: a save into it was interrupted while swapping folders "
        f"(the previous version is in {olds[0]}); save the model again, or rename that folder back"
    )


def _fsync_tree(folder: str) -> None:
    """Flush every file and folder under ``folder`` so a power cut cannot reorder data and rename."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def exchange(a: str, b: str) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2``); False where that is unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # no renameat2 (macOS, old glibc, Windows)
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE_ERRNOS:
        return False
    raise OSError(code, f"could not swap {a} and {b}: {os.strerror(code)}")


def _carry(source: str, destination: str) -> None:
    """Hard-link tree of ``source`` at ``destination`` (copies where links are not possible)."""
    if os.path.isdir(source) and not os.path.islink(source):
        shutil.copytree(source, destination, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, destination)


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, destination, follow_symlinks=False)


def replace_folder(target: str | os.PathLike, write: Callable[[str], None], keep: Optional[Callable[[str], bool]] = None) -> None:
    """Fill a new folder with ``write(tmp_folder)`` and swap it in for ``target`` in one step.

    ``keep(name)`` -> True for entries of the old folder that ``write`` does not own and that must
    survive (carried over as hard links); everything else the old folder held is dropped.
    Files created in the old folder while the new one is being written are not carried over.
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"{target} is a file, not a folder: save into a folder path")
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    clean_leftovers(target)
    tmp = _sibling(target, TEMP_TAG)
    os.makedirs(tmp)
    try:
        write(tmp)
        _fsync_tree(tmp)  # what write produced; carried entries are links to data already on disk
        if keep is not None and os.path.isdir(target):
            for name in os.listdir(target):
                if keep(name) and not os.path.lexists(os.path.join(tmp, name)):
                    _carry(os.path.join(target, name), os.path.join(tmp, name))
            _fsync_dir(tmp)
        if not os.path.isdir(target):
            os.rename(tmp, target)
        elif exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the old folder
        else:
            old = _sibling(target, OLD_TAG)
            os.rename(target, old)
            os.rename(tmp, target)  # between these two renames target is absent: missing_folder_hint
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
