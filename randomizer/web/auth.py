"""Sign-in, sign-out and the home page (R-WEB-2).

Failed sign-ins are counted per client by the same throttle as invalid API tokens
(:mod:`randomizer.services.throttling`), in the database, so every worker slows the same
client down: growing delays, then a wait, and never a locked account.
"""

from __future__ import annotations

from typing import Any

from flask import Response, redirect, request, session, url_for
from flask_babel import gettext

from randomizer.errors import Problem, TooManyRequests, Unauthorized
from randomizer.services.users import LANGUAGES, check_password, set_language
from randomizer.services.web_sessions import end_session, start_session
from randomizer.state import app_state
from randomizer.web.base import N_, POLICY, SESSION_ID, bp, current_actor, page, signed_in

WRONG = N_("The user name or the password is wrong (or the account is not active).")


@bp.get("/")
def home() -> Any:
    """The signed-in user's start page; the sign-in form for anyone else."""
    if current_actor() is None:
        return redirect(url_for("web.sign_in"))
    return page("home.html")


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    """The sign-in form: user name and password (and the CSRF token, like every form)."""
    target = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return page("sign_in.html", next=target, username="")
    state = app_state()
    username = request.form.get("username", "")[:64]
    password = request.form.get("password", "")
    try:
        actor = state.throttle.check(
            request.remote_addr, lambda reading: check_password(reading, username, password), WRONG
        )
    except Unauthorized:
        return page("sign_in.html", 401, next=target, username=username, error=gettext(WRONG))
    except TooManyRequests as refused:
        wait = refused.retry_after
        response = Response(
            page(
                "sign_in.html",
                next=target,
                username=username,
                error=gettext(
                    "Too many failed sign-ins from this computer: wait %(wait)s seconds, then "
                    "try again. No account is ever locked.",
                    wait=wait,
                ),
            )[0],
            status=429,
        )
        response.headers["Retry-After"] = str(wait)
        return response
    with state.db.transaction() as writing:
        session_id = start_session(writing, state.ctx, actor, POLICY)
    # A new cookie (and CSRF token) at sign-in: nothing set before it carries over.
    session.clear()
    session[SESSION_ID] = session_id
    return redirect(target or url_for("web.home"), code=303)


@bp.post("/sign-out")
@signed_in()
def sign_out() -> Any:
    """End the session (a POST: no GET changes anything)."""
    state, actor = app_state(), current_actor()
    assert actor is not None
    with state.db.transaction() as writing:
        end_session(writing, state.ctx, actor, session[SESSION_ID])
    session.clear()
    return redirect(url_for("web.sign_in"), code=303)


@bp.route("/language", methods=["GET", "POST"])
@signed_in()
def language() -> Any:
    """The signed-in user chooses the language of their pages (kept with their account)."""
    state, actor = app_state(), current_actor()
    assert actor is not None
    if request.method == "GET":
        return page("language.html", languages=LANGUAGES, errors={})
    chosen = request.form.get("language", "")
    try:
        with state.db.transaction() as writing:
            set_language(writing, state.ctx, actor, actor.name, chosen)
    except Problem as problem:
        return page(
            "language.html",
            problem.status,
            languages=LANGUAGES,
            errors=dict(problem.extra.get("errors") or {}),
            refusal=problem,
        )
    # Another page load shows the new language (the locale is read from the account then).
    return redirect(url_for("web.home"), code=303)


def _safe_next(target: str | None) -> str | None:
    """A page of this site to go to after sign-in, never another site's."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return None
