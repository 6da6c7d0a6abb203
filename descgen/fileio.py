"""Writing output files safely: all or nothing, and one clear error when the path is unusable."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from descgen.errors import DescgenError


class OutputPathError(DescgenError):
    """An output file cannot be written where the user asked (a directory, no permission, ...)."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _file_mode(path: Path) -> int:
    """Permissions for the new file: those of the file it replaces, else the umask's default."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path.

    The text goes to a temporary file in the same directory, is flushed to disk, and is renamed
    over ``path``; on any error the temporary file is removed, ``path`` is left as it was, and
    an :class:`OutputPathError` says what is wrong.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputPathError(f"cannot write {path}: it is a directory")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the directory {parent}: {_reason(exc)}") from None
    mode = _file_mode(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {_reason(exc)}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputPathError(f"cannot write {path}: {_reason(exc)}") from None
        raise
    sync_directory(parent)
    return path


def sync_directory(directory: Path) -> None:
    """Make the rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
