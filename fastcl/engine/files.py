"""Files a run writes: whole or not at all, with the permissions the user's umask gives, and a write
that fails (a full disk, a quota, a read-only folder) reported once, naming the file and the space
left, instead of as the chained tracebacks of the library that was writing.

`replace(path, write)` writes a temporary file in the same folder, flushes it to disk and renames
it over `path` (atomic on POSIX): a crash or a full disk leaves the previous file. `append` adds
bytes to a file or, failing, cuts it back to where it was. Reading: `read_text` and `read_json`
name the file (and what it is to the command) in every error they raise."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable, Optional


class WriteFailed(RuntimeError):
    """A file could not be written (full disk, quota, read-only file system); the message names it,
    the reason and the bytes free there. The previous file, if any, is unchanged."""


def umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode open() gives a new file: 0666 less the umask (tempfile.mkstemp gives 0600)."""
    return 0o666 & ~umask()


def os_error(exc: BaseException) -> Optional[OSError]:
    """The OSError behind `exc`: itself, or one it was raised from or while handling (torch.save
    reports a failed write as a RuntimeError raised while handling the OSError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def failure(path: str, exc: OSError, written: Optional[int] = None, note: str = "") -> WriteFailed:
    """The one message for a write of `path` that failed with `exc`."""
    try:
        free = f"; {shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free:,} bytes free there"
    except OSError:
        free = ""
    after = f" after {written:,} bytes" if written else ""
    return WriteFailed(f"could not write {path}{after}: {exc.strerror or exc}{free}{note}")


class _WholeWrites:
    """A file-like object over a descriptor whose write() writes all it is given or raises the
    OSError: a buffered file on a full disk makes torch.save fail with an unrelated message."""

    def __init__(self, fd: int):
        self.fd, self.written = fd, 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        while view:
            done = os.write(self.fd, view)
            view, self.written = view[done:], self.written + done
        return len(data)

    def flush(self) -> None:
        pass


def replace(path: str, write: Callable, suffix: str = "", note: str = "") -> None:
    """Calls write(f) with a binary file-like object and puts what it wrote at `path` in one rename;
    a failure of the disk raises WriteFailed (with `note` added) and leaves `path` as it was."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        raise failure(path, exc, note=note) from None
    out = _WholeWrites(fd)
    try:
        os.fchmod(fd, default_mode())
        write(out)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException as exc:
        _discard(fd, tmp)
        cause = os_error(exc)
        if cause is None:
            raise
        raise failure(path, cause, out.written, note) from None


def _discard(fd: int, tmp: str) -> None:
    if fd >= 0:
        os.close(fd)
    try:
        os.remove(tmp)
    except FileNotFoundError:
        pass


def append(path: str, data: bytes, note: str = "") -> None:
    """Appends `data` to `path` (created with the default mode); a failed write cuts the file back
    to its old length (no torn line where it can help it) and raises WriteFailed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise failure(path, exc, note=note) from None
    start = os.lseek(fd, 0, os.SEEK_END)
    out = _WholeWrites(fd)
    try:
        out.write(data)
    except OSError as exc:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass  # the readers drop a torn last line
        raise failure(path, exc, out.written, note) from None
    finally:
        os.close(fd)


def make_folder(path: str, option: str = "--out") -> None:
    """`path` as a folder this process can write in, or a ValueError saying why not."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{option} {path!r}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path!r} cannot be written to (a read-only file system, or no "
                         "permission)")


def read_error(what: str, path: str, exc: Exception) -> Exception:
    """The error for a file that could not be read, naming it: `what` says what it is ("--text-file")."""
    if isinstance(exc, UnicodeDecodeError):
        return ValueError(f"{what} {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})")
    if isinstance(exc, json.JSONDecodeError):
        return ValueError(f"{what} {path!r} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg})")
    if isinstance(exc, FileNotFoundError):
        return FileNotFoundError(f"{what} {path!r} does not exist")
    if isinstance(exc, IsADirectoryError):
        return ValueError(f"{what} {path!r} is a folder, not a file")
    if isinstance(exc, OSError):
        return ValueError(f"{what} {path!r} cannot be read ({exc.strerror or exc})")
    return ValueError(f"{what} {path!r}: {exc}")


def read_text(path: str, what: str = "file", encoding: str = "utf-8") -> str:
    """The whole text of `path`; every failure (missing, a folder, not readable, not UTF-8) a
    ValueError or FileNotFoundError naming it."""
    try:
        with open(path, encoding=encoding) as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise read_error(what, path, exc) from None


def read_json(path: str, what: str = "file"):
    """The JSON value in `path`, with read_text's errors and a ValueError naming the file, line and
    column of bad JSON."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise read_error(what, path, exc) from None
