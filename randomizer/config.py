"""Settings from ``SEALROOM_*`` environment variables.

Nothing secret has a default: the master key lives in the keys directory (created
explicitly by ``sealroom init-demo``) or in ``SEALROOM_MASTER_KEY``; it is never generated
silently at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Every variable the service reads, with what it means (README.md lists the same).
VARIABLES = {
    "SEALROOM_DATABASE_URL": "SQLAlchemy URL of the database (default: SQLite in the "
    "instance directory); PostgreSQL as postgresql+psycopg://user@host:port/db",
    "SEALROOM_INSTANCE_DIR": "directory for the SQLite file and tokens.json (default ./instance)",
    "SEALROOM_KEYS_DIR": "directory of the master and signing keys (default <instance>/keys)",
    "SEALROOM_MASTER_KEY": "optional master key '<key id>:<base64 32 bytes>' instead of the "
    "key file (takes precedence)",
    "SEALROOM_LOG_LEVEL": "logging level (default INFO)",
    "SEALROOM_MAX_BODY_BYTES": "largest request body accepted (default 65536)",
}


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
        if overrides:
            raise ConfigError(f"unknown settings: {sorted(overrides)}")
        return cls(
            database_url=database_url,
            instance_dir=instance_dir,
            keys_dir=keys_dir,
            log_level=log_level,
            max_body_bytes=max_body,
        )
