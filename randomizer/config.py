"""Settings from ``SEALROOM_*`` environment variables.

Nothing secret has a default: the master key lives in the keys directory (created
explicitly by ``sealroom init-demo``) or in ``SEALROOM_MASTER_KEY``; it is never generated
silently at start-up.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

#: Every variable the service reads, with what it means (README.md lists the same).
VARIABLES = {
    "SEALROOM_DATABASE_URL": "SQLAlchemy URL of the database (default: SQLite in the "
    "instance directory); PostgreSQL as postgresql+psycopg://user@host:port/db",
    "SEALROOM_INSTANCE_DIR": "directory for the SQLite file and tokens.json (default ./instance)",
    "SEALROOM_KEYS_DIR": "directory of the master and signing keys (default <instance>/keys)",
    "SEALROOM_MASTER_KEY": "optional master key '<key id>:<base64 32 bytes>' instead of the "
    "key file (takes precedence)",
    "SEALROOM_MASTER_KEY_PROVIDER": "where the master keys are: file (the keys directory, the "
    "default) or pkcs11 (a PKCS#11 token: an HSM)",
    "SEALROOM_PKCS11_LIBRARY": "the PKCS#11 module of the HSM (pkcs11 provider)",
    "SEALROOM_PKCS11_TOKEN": "the token's label (pkcs11 provider)",
    "SEALROOM_PKCS11_PIN_FILE": "file (mode 0600) holding the token's user PIN (pkcs11 provider)",
    "SEALROOM_PKCS11_KEY": "the active master key's id in the token (needed when it holds more "
    "than one)",
    "SEALROOM_LOG_LEVEL": "logging level (default INFO)",
    "SEALROOM_MAX_BODY_BYTES": "largest request body accepted (default 65536)",
    "SEALROOM_SMTP_URL": "mail server for notifications: smtp://[user:password@]host[:port], "
    "smtp+starttls://... for STARTTLS (default: none; messages wait in the outbox)",
    "SEALROOM_SMTP_FROM": "sender address of notifications (default sealroom@localhost)",
    "SEALROOM_NOTIFY_UNBLINDING": "comma-separated e-mail addresses of the sponsor's blinded "
    "safety contacts, told of every unblinding (default: none)",
    "SEALROOM_TOKEN_DAYS": "lifetime of a new API token in days (default 365, at most 3650); "
    "renew with `sealroom users token`",
    "SEALROOM_TRUSTED_PROXIES": "number of reverse proxies in front whose X-Forwarded-For "
    "names the client (default 0: trust no forwarded header)",
    "SEALROOM_AUTH_WINDOW": "seconds over which a client's failed authentications are counted "
    "(default 900)",
    "SEALROOM_AUTH_FREE_FAILURES": "failed authentications in a window answered 401 at once "
    "(default 5); the next ones wait 0.25 s, doubling up to 2 s",
    "SEALROOM_AUTH_MAX_FAILURES": "failed authentications in a window after which a client's "
    "invalid tokens get 429 with Retry-After (default 20)",
    "SEALROOM_SECURE_COOKIES": "1 behind TLS: the web pages' session cookie gets the Secure "
    "flag (default 0, for plain HTTP such as make run)",
    "SEALROOM_AUTH_MAX_DELAYED": "requests one server process holds in a delay at once; beyond, "
    "429 at once (default 4)",
}

#: A plausible e-mail address: one @, no spaces or controls, at most 254 characters.
EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.-]{1,189}")


@dataclass(frozen=True)
class SmtpServer:
    """Where and how notifications are sent. The password never appears in a repr or a log."""

    host: str
    port: int
    starttls: bool = False
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        """Parse ``smtp://[user:password@]host[:port]`` (``smtp+starttls://`` for STARTTLS)."""
        parsed = urlsplit(url)
        if parsed.scheme not in ("smtp", "smtp+starttls"):
            raise ConfigError("SEALROOM_SMTP_URL must start with smtp:// or smtp+starttls://")
        try:
            port = parsed.port or 25
        except ValueError:
            raise ConfigError("SEALROOM_SMTP_URL has a port that is not a number") from None
        if not parsed.hostname or parsed.path not in ("", "/") or parsed.query:
            raise ConfigError("SEALROOM_SMTP_URL must be smtp://[user:password@]host[:port]")
        return cls(
            host=parsed.hostname,
            port=port,
            starttls=parsed.scheme == "smtp+starttls",
            user=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
        )


def parse_addresses(text: str, variable: str) -> tuple[str, ...]:
    """A comma-separated list of e-mail addresses, each checked."""
    addresses = tuple(part.strip() for part in text.split(",") if part.strip())
    for address in addresses:
        if len(address) > 254 or not EMAIL.fullmatch(address):
            raise ConfigError(f"{variable}: {address!r} is not an e-mail address")
    return addresses


class ConfigError(ValueError):
    """A setting is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """The service's settings, resolved once at start-up."""

    database_url: str
    instance_dir: Path
    keys_dir: Path
    log_level: str = "INFO"
    max_body_bytes: int = 65536
    smtp: SmtpServer | None = None
    smtp_from: str = "sealroom@localhost"
    notify_unblinding: tuple[str, ...] = ()
    token_days: int = 365
    #: Reverse proxies in front whose ``X-Forwarded-For`` is trusted (werkzeug's ProxyFix).
    trusted_proxies: int = 0
    #: The authentication throttle (:mod:`randomizer.services.throttling`).
    auth_window_seconds: int = 900
    auth_free_failures: int = 5
    auth_max_failures: int = 20
    auth_max_delayed: int = 4
    #: The web pages' session cookie only over HTTPS (behind TLS).
    secure_cookies: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Resolve settings from ``environ`` (default ``os.environ``), then ``overrides``."""
        env = os.environ if environ is None else environ
        instance_dir = Path(
            overrides.pop("instance_dir", None) or env.get("SEALROOM_INSTANCE_DIR") or "instance"
        ).absolute()
        keys_dir = Path(
            overrides.pop("keys_dir", None) or env.get("SEALROOM_KEYS_DIR") or instance_dir / "keys"
        ).absolute()
        database_url = (
            overrides.pop("database_url", None)
            or env.get("SEALROOM_DATABASE_URL")
            or f"sqlite:///{instance_dir / 'sealroom.db'}"
        )
        try:
            max_body = int(
                overrides.pop("max_body_bytes", None) or env.get("SEALROOM_MAX_BODY_BYTES", 65536)
            )
        except ValueError as exc:
            raise ConfigError("SEALROOM_MAX_BODY_BYTES must be a whole number of bytes") from exc
        if max_body < 1024:
            raise ConfigError("SEALROOM_MAX_BODY_BYTES must be at least 1024")
        log_level = str(
            overrides.pop("log_level", None) or env.get("SEALROOM_LOG_LEVEL", "INFO")
        ).upper()
        smtp_url = overrides.pop("smtp_url", None) or env.get("SEALROOM_SMTP_URL") or None
        smtp_from = overrides.pop("smtp_from", None) or env.get(
            "SEALROOM_SMTP_FROM", "sealroom@localhost"
        )
        if not EMAIL.fullmatch(smtp_from):
            raise ConfigError("SEALROOM_SMTP_FROM must be an e-mail address")
        notify = overrides.pop("notify_unblinding", None)
        if notify is None:
            notify = parse_addresses(
                env.get("SEALROOM_NOTIFY_UNBLINDING", ""), "SEALROOM_NOTIFY_UNBLINDING"
            )

        def whole(name: str, variable: str, low: int, high: int, unit: str = "") -> int:
            # The default is the field's own (below).
            value = overrides.pop(name, None)
            if value is None:
                value = env.get(variable, str(getattr(cls, name)))
            return _whole_number(value, variable, low, high, unit)

        token_days = whole("token_days", "SEALROOM_TOKEN_DAYS", 1, 3650, " of days")
        trusted_proxies = whole("trusted_proxies", "SEALROOM_TRUSTED_PROXIES", 0, 10)
        window = whole("auth_window_seconds", "SEALROOM_AUTH_WINDOW", 1, 86400, " of seconds")
        free = whole("auth_free_failures", "SEALROOM_AUTH_FREE_FAILURES", 0, 100000)
        most = whole("auth_max_failures", "SEALROOM_AUTH_MAX_FAILURES", 1, 100000)
        delayed = whole("auth_max_delayed", "SEALROOM_AUTH_MAX_DELAYED", 0, 256)
        secure = overrides.pop("secure_cookies", None)
        if secure is None:
            secure = bool(
                _whole_number(
                    env.get("SEALROOM_SECURE_COOKIES", "0"), "SEALROOM_SECURE_COOKIES", 0, 1, ""
                )
            )
        if free > most:
            raise ConfigError(
                "SEALROOM_AUTH_FREE_FAILURES must not exceed SEALROOM_AUTH_MAX_FAILURES"
            )
        if overrides:
            raise ConfigError(f"unknown settings: {sorted(overrides)}")
        return cls(
            database_url=database_url,
            instance_dir=instance_dir,
            keys_dir=keys_dir,
            log_level=log_level,
            max_body_bytes=max_body,
            smtp=SmtpServer.from_url(smtp_url) if smtp_url else None,
            smtp_from=smtp_from,
            notify_unblinding=tuple(notify),
            token_days=token_days,
            trusted_proxies=trusted_proxies,
            auth_window_seconds=window,
            auth_free_failures=free,
            auth_max_failures=most,
            auth_max_delayed=delayed,
            secure_cookies=bool(secure),
        )


def _whole_number(value: object, variable: str, low: int, high: int, unit: str) -> int:
    """``value`` (text or int) as a whole number from ``low`` to ``high``, or a ConfigError."""
    text = str(value)
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ConfigError(f"{variable} must be a whole number{unit}, {low} to {high}")
    return int(text)
