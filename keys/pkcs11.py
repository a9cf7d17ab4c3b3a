"""Master keys in a PKCS#11 token (R-KEY-3), through python-pkcs11.

Each master key is an AES-256 secret key object in the token, labelled with its master key
id (``mk-<16 hex>``), created sensitive and not extractable: the token wraps and unwraps data
keys with CKM_AES_GCM and never hands the key out. Settings (environment)::

    SEALROOM_MASTER_KEY_PROVIDER=pkcs11
    SEALROOM_PKCS11_LIBRARY=/usr/lib/softhsm/libsofthsm2.so   the vendor's PKCS#11 module
    SEALROOM_PKCS11_TOKEN=sealroom                              the token's label
    SEALROOM_PKCS11_PIN_FILE=/etc/sealroom/pin                  the user PIN, mode 0600
    SEALROOM_PKCS11_KEY=mk-0123456789abcdef                     the active key (optional if
                                                                the token holds only one)

The PIN is read from a file, never from the environment or the command line, where other
users of the machine could read it (``/proc/<pid>/environ``, ``ps``).

A session is opened per operation: master keys are used at start-up and at key events, not
per request, and a session shared between threads or across a fork is what PKCS#11 modules
handle worst.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keys.masterkeys import (
    KEY_BYTES,
    NONCE_BYTES,
    KeyStoreError,
    _new_master_key_id,
    _read_secret_file,
)

LIBRARY_ENV = "SEALROOM_PKCS11_LIBRARY"
TOKEN_ENV = "SEALROOM_PKCS11_TOKEN"  # noqa: S105 (the name of a setting, not a secret)
PIN_FILE_ENV = "SEALROOM_PKCS11_PIN_FILE"
KEY_ENV = "SEALROOM_PKCS11_KEY"
_MASTER_KEY_LABEL = re.compile(r"mk-[0-9a-f]{16}")
_TAG_BITS = 128
# PKCS#11 modules may be initialised once per process; python-pkcs11 caches per path, but
# two threads loading at once is not something every module survives.
_LIBRARY_LOCK = threading.Lock()


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise KeyStoreError(
            "the pkcs11 master key provider needs python-pkcs11 (pip install python-pkcs11)"
        ) from None
    return pkcs11


class Pkcs11MasterKeys:
    """The :class:`keys.providers.MasterKeys` of one token: wrap and unwrap inside it."""

    def __init__(
        self,
        library: str,
        token_label: str,
        pin: str,
        active_id: str | None,
        empty_ok: bool = False,
    ) -> None:
        """Open the token once to list its master keys and check ``active_id``.

        ``empty_ok``: a token with no master key yet may be opened, to import or generate
        one (nothing can be wrapped until one is activated).
        """
        pkcs11 = _pkcs11()
        try:
            with _LIBRARY_LOCK:
                self._lib = pkcs11.lib(library)
            self._token = self._lib.get_token(token_label=token_label)
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
            raise KeyStoreError(
                f"cannot open PKCS#11 token {token_label!r} through {library}: {type(exc).__name__}"
            ) from None
        self._pin = pin
        self._label = token_label
        ids = self._list_key_ids()
        if active_id is None and empty_ok and not ids:
            self._ids, self._active_id = ids, ""
            return
        if active_id is None:
            if len(ids) != 1:
                raise KeyStoreError(
                    f"PKCS#11 token {token_label!r} holds {len(ids)} master keys: name the "
                    f"active one in {KEY_ENV}"
                )
            active_id = ids[0]
        if active_id not in ids:
            raise KeyStoreError(f"PKCS#11 token {token_label!r} holds no master key {active_id}")
        self._ids = ids
        self._active_id = active_id

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], empty_ok: bool = False) -> Pkcs11MasterKeys:
        """The token the ``SEALROOM_PKCS11_*`` settings name."""
        missing = [name for name in (LIBRARY_ENV, TOKEN_ENV, PIN_FILE_ENV) if not environ.get(name)]
        if missing:
            raise KeyStoreError(f"the pkcs11 master key provider needs {', '.join(missing)}")
        pin = _read_pin(Path(environ[PIN_FILE_ENV]))
        return cls(
            environ[LIBRARY_ENV],
            environ[TOKEN_ENV],
            pin,
            environ.get(KEY_ENV) or None,
            empty_ok,
        )

    def __repr__(self) -> str:
        return f"Pkcs11MasterKeys(token={self._label!r}, active_id={self._active_id!r})"

    @property
    def active_id(self) -> str:
        """The id (the token object's label) of the key that wraps new data keys."""
        return self._active_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The master keys the token held when this provider was opened (or made since)."""
        return tuple(self._ids)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._ids

    def _session(self) -> Any:
        pkcs11 = _pkcs11()
        try:
            return self._token.open(user_pin=self._pin, rw=True)
        except pkcs11.PKCS11Error as exc:
            # The PIN is never part of the message.
            raise KeyStoreError(
                f"cannot log in to PKCS#11 token {self._label!r}: {type(exc).__name__}"
            ) from None

    def _list_key_ids(self) -> list[str]:
        pkcs11 = _pkcs11()
        with self._session() as session:
            objects = session.get_objects(
                {
                    pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                    pkcs11.Attribute.KEY_TYPE: pkcs11.KeyType.AES,
                }
            )
            labels = [obj.label for obj in objects]
        return sorted({label for label in labels if _MASTER_KEY_LABEL.fullmatch(label or "")})

    def _key(self, session: Any, key_id: str) -> Any:
        pkcs11 = _pkcs11()
        try:
            return session.get_key(
                object_class=pkcs11.ObjectClass.SECRET_KEY,
                key_type=pkcs11.KeyType.AES,
                label=key_id,
            )
        except (pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned):
            raise KeyStoreError(
                f"PKCS#11 token {self._label!r} does not hold exactly one master key {key_id}"
            ) from None

    def wrap(self, plaintext: bytes, context: bytes) -> tuple[str, bytes]:
        """AES-256-GCM inside the token under the active key: ``nonce || ciphertext || tag``."""
        pkcs11 = _pkcs11()
        from pkcs11.mechanisms import GCMParams

        nonce = os.urandom(NONCE_BYTES)
        with self._session() as session:
            key = self._key(session, self._active_id)
            try:
                sealed = key.encrypt(
                    plaintext,
                    mechanism=pkcs11.Mechanism.AES_GCM,
                    mechanism_param=GCMParams(nonce, context, _TAG_BITS),
                )
            except pkcs11.PKCS11Error as exc:
                raise KeyStoreError(
                    f"wrap under master key {self._active_id} failed: {type(exc).__name__}"
                ) from None
        return self._active_id, nonce + bytes(sealed)

    def unwrap(self, master_key_id: str, wrapped: bytes, context: bytes) -> bytes:
        """Open what ``wrap`` (or a key file ring with the same key) made, inside the token."""
        pkcs11 = _pkcs11()
        from pkcs11.mechanisms import GCMParams

        if master_key_id not in self._ids:
            raise KeyStoreError(f"unknown master key {master_key_id!r}: it is not in the token")
        if len(wrapped) < NONCE_BYTES + 16:
            raise KeyStoreError(f"wrapped data under master key {master_key_id} is truncated")
        with self._session() as session:
            key = self._key(session, master_key_id)
            try:
                return bytes(
                    key.decrypt(
                        wrapped[NONCE_BYTES:],
                        mechanism=pkcs11.Mechanism.AES_GCM,
                        mechanism_param=GCMParams(wrapped[:NONCE_BYTES], context, _TAG_BITS),
                    )
                )
            except pkcs11.PKCS11Error:
                # Modules report a failed tag variously (SoftHSM2: a general error).
                raise KeyStoreError(
                    f"unwrap under master key {master_key_id} failed: wrong context, "
                    "or the wrapped data was altered"
                ) from None

    def generate(self) -> str:
        """Make a new master key inside the token (sensitive, not extractable); its id."""
        return self._store(_new_master_key_id(), None)

    def import_key(self, key_id: str, key: bytes) -> str:
        """Put an existing master key (from its key file) into the token, not extractable.

        The way from the key file provider to an HSM: what the key wrapped keeps opening.
        """
        if not _MASTER_KEY_LABEL.fullmatch(key_id) or len(key) != KEY_BYTES:
            raise KeyStoreError("a master key to import is an mk-<16 hex> id and 32 bytes")
        if key_id in self._list_key_ids():
            raise KeyStoreError(f"PKCS#11 token {self._label!r} already holds {key_id}")
        return self._store(key_id, key)

    def _store(self, key_id: str, value: bytes | None) -> str:
        pkcs11 = _pkcs11()
        attribute = pkcs11.Attribute
        template = {
            attribute.TOKEN: True,
            attribute.PRIVATE: True,
            attribute.SENSITIVE: True,
            attribute.EXTRACTABLE: False,
            attribute.ENCRYPT: True,
            attribute.DECRYPT: True,
            attribute.WRAP: False,
            attribute.UNWRAP: False,
            attribute.SIGN: False,
            attribute.VERIFY: False,
        }
        with self._session() as session:
            try:
                if value is None:
                    session.generate_key(
                        pkcs11.KeyType.AES, KEY_BYTES * 8, label=key_id, template=template
                    )
                else:
                    session.create_object(
                        {
                            **template,
                            attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                            attribute.KEY_TYPE: pkcs11.KeyType.AES,
                            attribute.LABEL: key_id,
                            attribute.ID: secrets.token_bytes(8),
                            attribute.VALUE: value,
                        }
                    )
            except pkcs11.PKCS11Error as exc:
                raise KeyStoreError(
                    f"cannot store master key {key_id} in PKCS#11 token {self._label!r}: "
                    f"{type(exc).__name__}"
                ) from None
        self._ids = sorted({*self._ids, key_id})
        return key_id

    def activate(self, key_id: str) -> None:
        """Wrap new data keys with ``key_id`` in this process (set SEALROOM_PKCS11_KEY too)."""
        if key_id not in self._ids:
            raise KeyStoreError(f"PKCS#11 token {self._label!r} holds no master key {key_id}")
        self._active_id = key_id


def _read_pin(path: Path) -> str:
    data = _read_secret_file(path)
    try:
        pin = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise KeyStoreError(f"PIN file {path} is not text") from None
    if not pin:
        raise KeyStoreError(f"PIN file {path} is empty")
    return pin
