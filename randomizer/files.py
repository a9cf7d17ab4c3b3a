"""Files that hold trial data are their owner's only: mode 0600, in directories of mode 0700.

The SQLite database (and the ``-wal``, ``-shm`` and ``-journal`` files SQLite makes beside
it, which it creates with the database file's own mode), ``tokens.json``, the audit export
and the lists export. Modes are set when a file is created, never left to the umask: the
umask is one setting of the whole process, which threads cannot change one at a time.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
#: The files SQLite keeps beside a database (named ``<database><suffix>``).
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700; an existing one is left as is."""
    missing = []
    current = path.absolute()
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR)
        except FileExistsError:
            continue
        os.chmod(directory, PRIVATE_DIR)  # mkdir's mode passes through the umask
    return path


def create_private_file(path: Path) -> int:
    """A new file of mode 0600 open for writing (its descriptor); one already there is replaced.

    ``O_EXCL`` creates it with that mode from its first instant, whatever the umask lets
    through, so it is never readable by others, not even while empty.
    """
    make_private_dir(path.parent)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    return fd


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600), replacing what was there."""
    with os.fdopen(create_private_file(path), "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def private_sqlite_files(database: str) -> None:
    """Before SQLite opens ``database``: make it its owner's only, and its companions too.

    A missing database file is created empty (an empty file is an empty database) with mode
    0600, so the ``-wal`` and ``-shm`` files SQLite later creates take that mode too. An
    existing file, or companion, that group or others may use loses that access. In-memory
    databases and ``file:`` URIs are left to SQLite.
    """
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    path = Path(database)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE))
    except FileExistsError:
        pass
    except OSError:
        return  # a missing directory, say: SQLite reports it in its own words
    for candidate in (path, *(Path(f"{path}{suffix}") for suffix in SQLITE_COMPANIONS)):
        _restrict(candidate)


def sqlite_do_connect(
    _dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]
) -> None:
    """SQLAlchemy ``do_connect`` listener: :func:`private_sqlite_files` on the database."""
    if cparams.get("uri"):
        return
    database = cargs[0] if cargs else cparams.get("database", "")
    private_sqlite_files(str(database))


def _restrict(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    try:
        os.chmod(path, mode & ~0o077)
    except OSError as exc:
        log.warning(
            "%s has mode %04o, which lets group or others read it, and cannot be changed (%s);"
            " chmod 600 it",
            path,
            mode,
            exc.strerror,
        )
