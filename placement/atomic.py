"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A crash or a bad input never leaves a half-written result behind: the temporary file is removed on any
exception, and a write that fails in the file system (read-only, full disk, a folder in the way, a parent
that is a file, no permission) becomes a :class:`PlacementError` naming the target and the cause.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from moe_placement.errors import PlacementError


def os_cause(exc: OSError) -> str:
    """The cause of an OSError in words ("No space left on device"), without errno or paths."""
    if exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def ensure_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` (and its parents) if absent; one clear error when a file is in the way."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PlacementError(f"cannot write into {folder}: it is a file, not a folder")
    for parent in folder.parents:
        if parent.exists() and not parent.is_dir():
            raise PlacementError(f"cannot create {folder}: {parent} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlacementError(f"cannot create folder {folder}: {os_cause(exc)}") from None
    return folder


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds.

    On any exception the temporary file is removed; OSErrors about the temporary file or the target
    become one :class:`PlacementError` that names ``target`` (the user never chose the temporary name).
    """
    target = Path(target)
    if target.is_dir():
        raise PlacementError(f"cannot write {target}: it is a folder")
    ensure_folder(target.parent)
    # The name is chosen before the file exists, and the clean-up below covers its creation: a signal
    # (SIGTERM raises in the main thread between any two bytecodes) that lands just after the file
    # appears still has it removed. With mkstemp the name was only known once the file existed.
    tmp: Path | None = None
    try:
        for tmp in temporary_names(target, suffix):
            if create_new(tmp):
                break
        else:
            tmp = None  # every name taken: none of those files is ours
            raise PlacementError(f"cannot write {target}: no free temporary name next to it")
        yield tmp
        os.replace(tmp, target)
        done_with(tmp)
    except OSError as exc:
        if exc.filename not in (None, str(tmp), str(target)):
            raise  # about some other file: the caller names it
        raise PlacementError(f"cannot write {target}: {os_cause(exc)}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
            done_with(tmp)


def temporary_names(target: Path, suffix: str, tries: int = 100) -> Iterator[Path]:
    """Random hidden names next to ``target`` for its temporary file (not created)."""
    for _ in range(tries):
        yield target.parent / f".{target.name}.{secrets.token_hex(6)}{suffix}"


# The temporary files this process created and has not renamed or removed yet. A signal can land
# between any two bytecodes, even between a file's creation and the statement that remembers it in a
# ``finally``'s reach; the command line removes what is left here when it ends on a signal
# (:func:`remove_leftovers`). A name joins before its file exists, so no file escapes the set.
_live: set[Path] = set()


def create_new(path: Path) -> bool:
    """Create ``path`` empty (mode from the umask, as any result) and remember it as a temporary file
    until :func:`done_with`; False if it already exists."""
    _live.add(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        _live.discard(path)  # another file's name: not ours to remove
        return False
    except OSError:
        _live.discard(path)  # never made
        raise
    os.close(fd)
    return True


def done_with(path: Path) -> None:
    """``path`` was renamed into place or removed: no longer a temporary file of this process."""
    _live.discard(path)


def remove_leftovers() -> None:
    """Remove every temporary file this process still holds (at exit on a signal)."""
    for path in list(_live):
        with contextlib.suppress(OSError):
            path.unlink()
        _live.discard(path)


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``target`` only when the block succeeds."""
    with atomic_path(target) as tmp, open(tmp, mode) as handle:
        yield handle


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(target) as handle:
        json.dump(obj, handle, indent=1)
        handle.write("\n")
