"""Sealroom: randomisation and blinding for double-blind clinical trials.

``create_app`` reads like a table of contents: settings, database, trial context, API, pages.
Nothing is imported at module level: importing the pure core (``randomizer.domain``) must
not load Flask, SQLAlchemy or the keys (a test checks it in a clean interpreter).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask application.

    ``config`` may hold ``settings`` (a :class:`randomizer.config.Settings`), ``database``
    (a :class:`randomizer.db.Database`, e.g. bound to a test transaction), ``clock`` (a
    callable returning aware UTC datetimes), ``sleep`` (how the authentication throttle
    waits its delays, ``time.sleep`` by default), ``transport`` (what sends notifications, instead
    of the SMTP server the settings name) and any Flask setting. Without them, settings
    come from the ``SEALROOM_*`` variables.
    """
    from flask import Flask

    from randomizer import api, web
    from randomizer.config import Settings
    from randomizer.db import Database
    from randomizer.migrations import check_schema_current
    from randomizer.schemas import build_trial_schemas
    from randomizer.services.context import Notices, load_trial_context, utc_now
    from randomizer.services.notifications import Dispatcher, transport_for
    from randomizer.services.throttling import AuthThrottle, ThrottlePolicy
    from randomizer.state import EXTENSION, AppState
    from randomizer.wsgi import BodyDeadline

    options = dict(config or {})
    settings = options.pop("settings", None) or Settings.from_env()
    database = options.pop("database", None) or Database(settings.database_url)
    clock = options.pop("clock", utc_now)
    sleep = options.pop("sleep", time.sleep)
    transport = options.pop("transport", None)

    logging.basicConfig(level=settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config.update(options)

    with database.reading() as session:
        # Serve only the schema this code was written for: older needs `sealroom db
        # upgrade`; newer belongs to newer code.
        check_schema_current(session.connection())
        ctx = load_trial_context(session, settings.keys_dir, clock=clock)
    # Messages are sent after the commits that write them, by a background dispatcher; with
    # no mail server configured they wait in the outbox for `sealroom notifications send`.
    transport = transport or transport_for(settings)
    dispatcher = Dispatcher(database, ctx, transport) if transport is not None else None
    ctx = replace(
        ctx,
        token_lifetime=timedelta(days=settings.token_days),
        notices=Notices(
            safety_contacts=settings.notify_unblinding,
            wake=dispatcher.wake if dispatcher is not None else None,
        ),
    )
    if dispatcher is not None:
        dispatcher.ctx = ctx
    schemas = build_trial_schemas(ctx.definition)
    throttle = AuthThrottle(database, ctx, ThrottlePolicy.from_settings(settings), sleep)
    app.extensions[EXTENSION] = AppState(
        settings=settings,
        db=database,
        ctx=ctx,
        schemas=schemas,
        throttle=throttle,
        dispatcher=dispatcher,
    )
    api.init_app(app, schemas)
    web.init_app(app, app.extensions[EXTENSION])
    app.wsgi_app = BodyDeadline(app.wsgi_app)  # type: ignore[method-assign]
    if settings.trusted_proxies:
        # The client's address, for the throttle, from the N proxies' X-Forwarded-For.
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=0, x_host=0
        )
    return app
