"""The web pages' session and CSRF secret (issue 13).

It signs the session cookie (which holds only a random session id and the CSRF token; the
session itself is a database row) and the CSRF tokens. Every worker and server process of a
deployment must hold the same one, so it lives in the keys directory, created explicitly by
``sealroom init`` / ``init-demo`` (or ``sealroom db upgrade`` for a deployment older than the
web pages), never generated silently at start-up.

Layout: ``<keys_dir>/web/session.key``: 32 random bytes in hex, mode 0600, in a directory of
mode 0700 (the same checks as the other keys). Whoever holds it can forge a CSRF token, not a
session: a session also needs its id, which only the database knows (as a hash).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from keys.masterkeys import KeyStoreError, _create_subdir_secret_file, _read_subdir_secret_file

SESSION_DIR = "web"
SESSION_KEY_FILE = "session.key"


def session_secret_path(keys_dir: str | os.PathLike[str]) -> Path:
    """Where the session secret of ``keys_dir`` lives."""
    return Path(keys_dir) / SESSION_DIR / SESSION_KEY_FILE


def create_session_secret(keys_dir: str | os.PathLike[str]) -> None:
    """Generate the session secret; refuse (KeyStoreError) to overwrite one.

    Replacing it would sign everyone out: it is rotated only deliberately (delete, create).
    """
    _create_subdir_secret_file(
        session_secret_path(keys_dir),
        secrets.token_hex(32).encode("ascii") + b"\n",
        "the session secret",
    )


def load_session_secret(keys_dir: str | os.PathLike[str]) -> bytes:
    """The session secret; KeyStoreError if it is missing, exposed or malformed."""
    path = session_secret_path(keys_dir)
    if not path.exists():
        raise KeyStoreError(
            f"the web session secret {path} is missing: run `sealroom db upgrade` to create it"
        )
    text = _read_subdir_secret_file(path).strip()
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise KeyStoreError(f"session secret file {path} is malformed: expected hex") from None
    if len(secret) < 32:
        raise KeyStoreError(f"session secret file {path} is malformed: fewer than 32 bytes")
    return secret
