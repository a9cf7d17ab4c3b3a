"""Server-rendered pages for every role (issue 13, R-WEB-1, R-WEB-2, R-WEB-3).

Plain HTML forms, no script: each page calls the same service functions as the API (the
rules, checks and queries live there, once), behind a password sign-in with server-side
sessions (:mod:`randomizer.services.web_sessions`) and CSRF tokens on every form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from randomizer.state import AppState


def init_app(app: Flask, state: AppState) -> None:
    """Register the pages, their session secret, cookie settings and languages."""
    from flask_babel import Babel
    from flask_wtf.csrf import generate_csrf

    from keys import load_session_secret
    from randomizer.api.problems import ERROR_PAGE
    from randomizer.web import (  # noqa: F401  (each module adds its pages to the blueprint)
        admin,
        audit,
        auth,
        corrections,
        participants,
        pharmacy,
        reports,
        shipments,
        unblinding,
    )
    from randomizer.web.base import bp, error_page, page_language

    # Shared by every worker: the cookie and the CSRF tokens verify in any of them.
    app.secret_key = load_session_secret(state.settings.keys_dir)
    app.config.update(
        SESSION_COOKIE_NAME="sealroom_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=state.settings.secure_cookies,
        # The token lives as long as the signed cookie; the session row sets the real limit.
        WTF_CSRF_TIME_LIMIT=None,
        BABEL_TRANSLATION_DIRECTORIES=str(app.root_path) + "/web/translations",
    )
    Babel(app, locale_selector=page_language)
    # Every form carries the token (Flask-WTF's, checked in randomizer.web.base).
    app.jinja_env.globals["csrf_token"] = generate_csrf
    app.register_blueprint(bp)
    # Errors on the pages' paths (not /api/) are shown as a page: randomizer.api.problems.
    app.extensions[ERROR_PAGE] = error_page
