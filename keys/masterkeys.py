"""Master keys: the top of the key hierarchy, kept outside the database (URS §5, §9).

A master key only ever wraps data keys (see ``keys.datakeys``); a copy of the database holds
wrapped data keys and sealed arms, never a master key, so it reveals no allocation.

Layout of a keys directory (``SEALROOM_KEYS_DIR``, default ``./instance/keys``)::

    <keys_dir>/               mode 0700
      master/                 mode 0700
        mk-<16 hex>.key       mode 0600: base64 of the 32-byte key, then a newline
        ACTIVE                mode 0600: the id of the key that wraps new data keys
      signing/                (keys.signing)

Alternatively the active master key comes from the environment, ``SEALROOM_MASTER_KEY`` =
``<key id>:<base64 of 32 bytes>``, for deployments whose secrets manager injects variables.

Nothing here ever puts key material into an exception message or a repr: the messages name the
file and what is wrong with it, never its contents.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
MASTER_KEY_ENV = "SEALROOM_MASTER_KEY"
MASTER_DIR = "master"
ACTIVE_FILE = "ACTIVE"
KEY_SUFFIX = ".key"

_MASTER_KEY_ID = re.compile(r"mk-[0-9a-f]{16}")
# A key file is a few dozen bytes; anything much larger is not a key file.
_MAX_SECRET_FILE_BYTES = 64 * 1024


class KeysError(Exception):
    """Any refusal of the key hierarchy: what a command line reports as one ``error:`` line.

    Messages name the file or key id and what is wrong; they never contain key material.
    """


class KeyStoreError(KeysError):
    """A key store problem: a missing, malformed or exposed key file, or a failed unwrap.

    Messages name the file or key id and what is wrong; they never contain key material.
    """


# --------------------------------------------------------------------------------------------
# Files. Shared with keys.signing: every secret file goes through these helpers.


def _mode_text(mode: int) -> str:
    return f"0o{stat.S_IMODE(mode):03o}"


def _check_private_dir(path: Path) -> None:
    """Refuse a directory that is missing, not a directory, or open to group or others."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise KeyStoreError(f"key directory {path} does not exist") from None
    except OSError as exc:
        raise KeyStoreError(f"cannot read key directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise KeyStoreError(f"{path} is not a directory")
    if info.st_mode & 0o077:
        raise KeyStoreError(
            f"key directory {path} has mode {_mode_text(info.st_mode)}, which gives group or "
            f"others access; it must be 0o700 (chmod 700 {path})"
        )


def _ensure_private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700 if missing (parents with the default mode), then check it.

    An existing directory that is open to group or others is refused rather than silently
    tightened: someone chose that mode, and a key may already have been exposed through it.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise KeyStoreError(f"cannot create key directory {path}: {exc.strerror}") from None
    else:
        # mkdir's mode is filtered by the umask; set it exactly so the owner can use it.
        os.chmod(path, 0o700)
    _check_private_dir(path)


def _read_secret_file(path: Path) -> bytes:
    """Read a small secret file after checking (on the open descriptor) that it is private.

    Checking with fstat on the descriptor we read from, not stat on the name, leaves no window
    in which the file could be swapped between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyStoreError(f"key file {path} is missing") from None
    except OSError as exc:
        raise KeyStoreError(f"cannot open key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KeyStoreError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyStoreError(
                f"key file {path} has mode {_mode_text(info.st_mode)}, which lets group or "
                f"others read or write it; it must be 0o600 (chmod 600 {path})"
            )
        data = handle.read(_MAX_SECRET_FILE_BYTES + 1)
    if len(data) > _MAX_SECRET_FILE_BYTES:
        raise KeyStoreError(f"key file {path} is malformed: too large to be a key file")
    return data


def _fsync_dir(path: Path) -> None:
    # A new directory entry is durable only once the directory itself is synced.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp_file(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to a fresh hidden file in ``directory``, created 0600, and fsync it."""
    temp = directory / f".{name}.{secrets.token_hex(8)}.tmp"
    # O_EXCL: created with mode 0600 from the first instant, so the key is never readable by
    # anyone else, even briefly; O_NOFOLLOW: never write a key through a planted symlink.
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp


def _write_new_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600) holding ``data``; refuse if it exists: keys are never replaced.

    The bytes are written and synced under a temporary name, then hard-linked into place: the
    link fails if the name exists (no overwrite, even in a race), and a reader never sees a
    half-written key file.
    """
    try:
        temp = _write_temp_file(path.parent, path.name, data)
        try:
            os.link(temp, path)
        finally:
            os.unlink(temp)
        _fsync_dir(path.parent)
    except FileExistsError:
        raise KeyStoreError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyStoreError(f"cannot write key file {path}: {exc.strerror}") from None


def _create_subdir_secret_file(path: Path, data: bytes, what: str) -> None:
    """Create ``<keys_dir>/<subdir>/<name>`` holding ``data``, both directories 0700; refuse
    (KeyStoreError) to overwrite ``what`` (a key that is there stays, whatever is asked)."""
    _ensure_private_dir(path.parent.parent)
    _ensure_private_dir(path.parent)
    if path.exists():
        raise KeyStoreError(f"{path} already exists; refusing to overwrite {what}")
    _write_new_secret_file(path, data)


def _read_subdir_secret_file(path: Path) -> bytes:
    """Read ``<keys_dir>/<subdir>/<name>`` once both directories are checked to be private."""
    _check_private_dir(path.parent.parent)
    _check_private_dir(path.parent)
    return _read_secret_file(path)


def _replace_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` (mode 0600) with ``data``: readers see old or new, never half."""
    try:
        temp = _write_temp_file(path.parent, path.name, data)
        try:
            os.replace(temp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        _fsync_dir(path.parent)
    except OSError as exc:
        raise KeyStoreError(f"cannot write {path}: {exc.strerror}") from None


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` so that two creations or rotations serialise."""
    fd = os.open(directory / ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Parsing. Every parse error is raised "from None": a decoder's own message may quote the
# offending input (UnicodeDecodeError names the byte), and that input is key material.


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyStoreError(f"{where} is malformed: not base64") from None
    if len(key) != KEY_BYTES:
        raise KeyStoreError(f"{where} is malformed: a master key is {KEY_BYTES} bytes") from None
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        text = _read_secret_file(path).decode("ascii")
    except UnicodeDecodeError:
        raise KeyStoreError(f"key file {path} is malformed: not base64 text") from None
    return _decode_key(text, f"key file {path}")


def _read_active_id(master_dir: Path) -> str:
    path = master_dir / ACTIVE_FILE
    try:
        active = _read_secret_file(path).decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyStoreError(f"{path} is malformed: expected a master key id") from None
    if not _MASTER_KEY_ID.fullmatch(active):
        raise KeyStoreError(f"{path} is malformed: expected a master key id (mk-<16 hex>)")
    return active


def _parse_env_key(value: str) -> tuple[str, bytes]:
    malformed = KeyStoreError(
        f"{MASTER_KEY_ENV} is malformed: expected '<key id>:<base64 of {KEY_BYTES} bytes>' "
        "with a key id of the form mk-<16 hex digits>"
    )
    key_id, sep, encoded = value.partition(":")
    if not sep or not _MASTER_KEY_ID.fullmatch(key_id):
        raise malformed
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise malformed from None
    if len(key) != KEY_BYTES:
        raise malformed
    return key_id, key


def _load_directory_keys(master_dir: Path) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for name in sorted(os.listdir(master_dir)):
        # Hidden names are our temporary files and the lock; ACTIVE is read separately.
        if name.startswith(".") or not name.endswith(KEY_SUFFIX):
            continue
        key_id = name.removesuffix(KEY_SUFFIX)
        if not _MASTER_KEY_ID.fullmatch(key_id):
            raise KeyStoreError(
                f"unexpected key file {master_dir / name}: master key files are named "
                f"mk-<16 hex digits>{KEY_SUFFIX}"
            )
        keys[key_id] = _read_key_file(master_dir / name)
    return keys


def _new_master_key_id() -> str:
    return "mk-" + secrets.token_hex(8)


# --------------------------------------------------------------------------------------------
# The ring.


class MasterKeyRing:
    """The master keys one process may use: every known key for unwrapping, one for wrapping.

    Old keys stay in the ring after a rotation because data keys wrapped by them remain in the
    database until rewrapped (``keys.datakeys.rewrap_data_key``).
    """

    def __init__(self, keys: Mapping[str, bytes], active_id: str) -> None:
        """Build a ring from ``{key_id: 32-byte key}``; ``active_id`` wraps new data keys."""
        if not keys:
            raise ValueError("a master key ring needs at least one key")
        ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not key_id:
                raise ValueError("master key ids must be non-empty strings")
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise ValueError(f"master key {key_id} must be {KEY_BYTES} bytes")
            ciphers[key_id] = AESGCM(key)
        if active_id not in ciphers:
            raise ValueError(f"active master key {active_id} is not in the ring")
        # Only the AESGCM objects are kept: no attribute of the ring is the raw key.
        self._ciphers = ciphers
        self._active_id = active_id

    @classmethod
    def generate(cls) -> MasterKeyRing:
        """A ring holding one fresh random key, in memory only (for tests and tooling)."""
        key_id = _new_master_key_id()
        return cls({key_id: secrets.token_bytes(KEY_BYTES)}, key_id)

    @property
    def active_id(self) -> str:
        """The id of the master key that wraps new data keys."""
        return self._active_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every master key id in the ring, sorted."""
        return tuple(sorted(self._ciphers))

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._ciphers

    def __repr__(self) -> str:
        # Ids only: the key material must never reach a log line or a traceback.
        return f"MasterKeyRing(active_id={self._active_id!r}, key_ids={list(self.key_ids)!r})"

    def wrap(self, plaintext: bytes, context: bytes) -> tuple[str, bytes]:
        """Encrypt ``plaintext`` under the active key; return ``(key id, nonce || ciphertext)``.

        ``context`` is authenticated as AES-GCM associated data, so a wrapped blob opens only
        for the purpose (and the row) it was made for. The nonce is random: a master key wraps
        a handful of data keys in its life, far below the 2**32 random-nonce invocations that
        NIST SP 800-38D allows per key, so a repeat is not a practical risk.
        """
        nonce = os.urandom(NONCE_BYTES)
        return self._active_id, nonce + self._ciphers[self._active_id].encrypt(
            nonce, plaintext, context
        )

    def unwrap(self, master_key_id: str, wrapped: bytes, context: bytes) -> bytes:
        """Decrypt what ``wrap`` produced; KeyStoreError on an unknown key id or a failed check."""
        cipher = self._ciphers.get(master_key_id)
        if cipher is None:
            raise KeyStoreError(f"unknown master key {master_key_id!r}: it is not in the ring")
        if len(wrapped) < NONCE_BYTES + 16:
            raise KeyStoreError(f"wrapped data under master key {master_key_id} is truncated")
        try:
            return cipher.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], context)
        except InvalidTag:
            raise KeyStoreError(
                f"unwrap under master key {master_key_id} failed: wrong context, "
                "or the wrapped data was altered"
            ) from None


# --------------------------------------------------------------------------------------------
# The keys directory.


def create_keys_dir(keys_dir: str | os.PathLike[str]) -> MasterKeyRing:
    """Create the keys directory tree and a first master key; return the ring.

    Refuses (KeyStoreError) if a master key already exists there: overwriting one would lose
    the ability to unwrap every data key it wrapped, and so to ever unblind the trial.
    """
    root = Path(keys_dir)
    master_dir = root / MASTER_DIR
    _ensure_private_dir(root)
    _ensure_private_dir(master_dir)
    with _directory_lock(master_dir):
        existing = [n for n in os.listdir(master_dir) if n.endswith(KEY_SUFFIX)]
        if existing:
            raise KeyStoreError(
                f"{master_dir} already holds master keys; refusing to create another key set "
                "(use rotate_master_key to add a key)"
            )
        _add_master_key(master_dir)
    return load_master_keys(root, environ={})


def _add_master_key(master_dir: Path) -> str:
    key_id = _new_master_key_id()
    encoded = base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"
    # Key first, ACTIVE second: ACTIVE never names a key that is not yet fully on disk.
    _write_new_secret_file(master_dir / f"{key_id}{KEY_SUFFIX}", encoded)
    _replace_file(master_dir / ACTIVE_FILE, key_id.encode("ascii") + b"\n")
    return key_id


def rotate_master_key(keys_dir: str | os.PathLike[str]) -> MasterKeyRing:
    """Add a new master key to the directory and make it active; old keys stay for unwrapping.

    Existing data keys keep working; rewrap them (``keys.datakeys.rewrap_data_key``) to retire
    an old master key. Only the directory is rotated: a key given by ``SEALROOM_MASTER_KEY``
    is rotated by changing the variable.
    """
    root = Path(keys_dir)
    master_dir = root / MASTER_DIR
    load_master_keys(root, environ={})  # refuse to add to a key set that does not load
    with _directory_lock(master_dir):
        _add_master_key(master_dir)
    return load_master_keys(root, environ={})


def load_master_keys(
    keys_dir: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> MasterKeyRing:
    """Load the master key ring from ``SEALROOM_MASTER_KEY`` and/or the keys directory.

    With ``SEALROOM_MASTER_KEY`` in ``environ`` (``os.environ`` when None) that key is the
    active one, and any keys in the directory are loaded too, to unwrap older data keys.
    Without it the directory must hold the keys and ``ACTIVE``. Refuses (KeyStoreError) a
    directory or file open to group or others, a malformed key file or variable, a missing
    ``ACTIVE`` and an ``ACTIVE`` naming an absent key.
    """
    env = os.environ if environ is None else environ
    env_key = _parse_env_key(env[MASTER_KEY_ENV]) if MASTER_KEY_ENV in env else None
    root = Path(keys_dir)
    master_dir = root / MASTER_DIR

    if env_key is None or root.exists():
        _check_private_dir(root)
    keys: dict[str, bytes] = {}
    active_id: str | None = None
    if env_key is None or master_dir.exists():
        _check_private_dir(master_dir)
        if env_key is None:
            # ACTIVE before the listing: a rotation writes the key before ACTIVE, so the key
            # ACTIVE names is always in the listing that follows.
            active_id = _read_active_id(master_dir)
        keys = _load_directory_keys(master_dir)

    if env_key is not None:
        env_id, env_bytes = env_key
        if env_id in keys and not secrets.compare_digest(keys[env_id], env_bytes):
            raise KeyStoreError(
                f"{MASTER_KEY_ENV} names master key {env_id}, but {master_dir} holds a "
                "different key with that id"
            )
        keys[env_id] = env_bytes
        active_id = env_id
    elif not keys:
        raise KeyStoreError(f"no master keys in {master_dir}")

    if active_id is None or active_id not in keys:
        raise KeyStoreError(
            f"{master_dir / ACTIVE_FILE} names master key {active_id}, which is not in {master_dir}"
        )
    return MasterKeyRing(keys, active_id)


def read_master_key(
    keys_dir: str | os.PathLike[str],
    key_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str, bytes]:
    """``(key id, key)`` of one master key: ``key_id``, or the active one when None.

    For the custody ceremony only (``sealroom keys split``): everything else reaches master
    keys through a ring, which never hands out the key itself.
    """
    env = os.environ if environ is None else environ
    ring = load_master_keys(keys_dir, env)  # the same checks as serving
    wanted = ring.active_id if key_id is None else key_id
    if wanted not in ring:
        raise KeyStoreError(f"unknown master key {wanted!r}: it is not in the ring")
    if MASTER_KEY_ENV in env:
        env_id, env_key = _parse_env_key(env[MASTER_KEY_ENV])
        if env_id == wanted:
            return env_id, env_key
    return wanted, _read_key_file(Path(keys_dir) / MASTER_DIR / f"{wanted}{KEY_SUFFIX}")
