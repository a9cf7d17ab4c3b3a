"""What the application holds for its requests: settings, database, trial context."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from randomizer.config import Settings
from randomizer.db import Database
from randomizer.schemas import TrialSchemas
from randomizer.services.context import TrialContext
from randomizer.services.notifications import Dispatcher
from randomizer.services.throttling import AuthThrottle

EXTENSION = "sealroom"


@dataclass(frozen=True)
class AppState:
    """The service's state, built once by ``create_app``."""

    settings: Settings
    db: Database
    ctx: TrialContext
    schemas: TrialSchemas
    #: Authenticates bearer tokens, slowing down and refusing clients that keep failing.
    throttle: AuthThrottle
    #: Delivers the outbox after commits; None where no mail server is configured.
    dispatcher: Dispatcher | None = None


def app_state() -> AppState:
    """The current application's state."""
    return current_app.extensions[EXTENSION]
