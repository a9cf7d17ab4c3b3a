"""What every page shares: the blueprint, the signed-in actor, CSRF, headers, error pages,
forms, one-time form keys and electronic signatures."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from flask import Blueprint, Response, g, redirect, render_template, request, session, url_for
from flask_babel import gettext
from flask_wtf.csrf import CSRFError, validate_csrf
from sqlalchemy.orm import Session
from wtforms import ValidationError

from randomizer.api.parsing import validate_with
from randomizer.errors import Forbidden, Problem, SignatureRefused, TooManyRequests
from randomizer.roles import Actor, Permission
from randomizer.services.idempotency import Outcome, perform_once_or_refuse, request_digest
from randomizer.services.inputs import Submission
from randomizer.services.refusals import Refusal
from randomizer.services.users import LANGUAGES, Signature
from randomizer.services.web_sessions import SessionPolicy, open_session, touch_session
from randomizer.state import app_state

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
#: A page: its HTML, its status and its headers (Flask's view answer).
Page = tuple[str, int, dict[str, str]]


def N_(message: str) -> str:
    """Mark ``message`` for the catalogue (pybabel -k N_); it is translated where shown."""
    return message


bp = Blueprint(
    "web",
    __name__,
    template_folder="templates",
    static_folder="static",
    # Not /static: the application's own static route would answer it first (404).
    static_url_path="/assets",
)

POLICY = SessionPolicy()
#: The session cookie's key of the random session id.
SESSION_ID = "sid"
#: No script at all, no framing, forms only to this site (R-WEB-2).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def current_actor() -> Actor | None:
    """The signed-in actor of this request, or None."""
    return g.get("actor")


def page_language() -> str:
    """The signed-in user's language, else the browser's best match, else English."""
    language = g.get("language")
    if language in LANGUAGES:
        return language
    return request.accept_languages.best_match(LANGUAGES) or "en"


@bp.before_request
def _load_session() -> Response | None:
    """Refuse a POST without a valid CSRF token (the sign-in too); find the session's actor."""
    if request.method not in ("GET", "HEAD"):
        try:
            validate_csrf(request.form.get("csrf_token"))
        except (ValidationError, CSRFError) as error:
            return _refused_form(str(error))
    session_id = session.get(SESSION_ID)
    if not isinstance(session_id, str):
        return None
    state = app_state()
    now = state.ctx.clock()
    with state.db.reading() as reading:
        found = open_session(reading, session_id, now, POLICY)
    if found is None:
        session.pop(SESSION_ID, None)
        return None
    if found.stale:
        with state.db.transaction() as writing:
            touch_session(writing, session_id, now)
    g.actor, g.language = found.actor, found.language
    return None


def _refused_form(reason: str) -> Response:
    page = render_template(
        "error.html",
        trial=app_state().ctx.definition,
        actor=None,
        language=page_language(),
        title="Form refused",
        detail="The form has expired or did not come from this site's page "
        f"({reason.rstrip('.')}). Go back, reload the page and send it again.",
    )
    return Response(page, status=400)


@bp.after_request
def _security_headers(response: Response) -> Response:
    """Every page: no script, no framing, not sniffed, never cached (participant data)."""
    # A report's SVG picture sets its own (still script-free) policy: randomizer.web.reports.
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


#: The error page's own words for what the framework or the server refuses (no service's
#: detail to show): an unknown address, a wrong method, a body too large, a failure.
GENERIC_ERRORS = {
    404: (
        N_("Page not found"),
        N_("There is no page at this address. Check the address, or go back to the start page."),
    ),
    405: (
        N_("Not allowed here"),
        N_(
            "This page cannot be used this way (an address only a form's button may send, "
            "say). Go back and use the page's own links and buttons."
        ),
    ),
    413: (N_("Too large"), N_("What was sent is too large for this page.")),
    500: (
        N_("Something went wrong"),
        N_(
            "The server could not complete the request; nothing was changed. Try again, and "
            "tell the trial's administrator if it happens again."
        ),
    ),
    503: (
        N_("Service unavailable"),
        N_("The database is busy or unavailable; nothing was changed. Try again in a moment."),
    ),
}
#: For any other refusal of the framework's (its own detail is shown with it).
REQUEST_REFUSED = N_("Request refused")


def error_page(body: dict[str, Any], generic: bool) -> Response:
    """The HTML page of a problem on a web path (``randomizer.api.problems`` maps every error
    once and calls this outside ``/api/``): the layout with the trial, in the user's or the
    browser's language, with every page's security headers.

    ``generic`` problems (an unknown address, a wrong method, a failure of the server's own)
    are told in the page's own translated words; a service's refusal shows its title and
    detail. Outside the pages' blueprint (an unknown address) nobody is signed in to show.
    """
    status = int(body["status"])
    title, detail = str(body.get("title", "")), str(body.get("detail", ""))
    if generic:
        words = GENERIC_ERRORS.get(status) or (GENERIC_ERRORS[500] if status >= 500 else None)
        if words is None:
            title = gettext(REQUEST_REFUSED)
        else:
            title, detail = gettext(words[0]), gettext(words[1])
    text, code, headers = page("error.html", status, title=title, detail=detail)
    return _security_headers(Response(text, status=code, headers=headers))


def signed_in(permission: Permission | None = None) -> Callable[[F], F]:
    """Require a signed-in user (else the sign-in page), of a role ``permission`` allows (403).

    Services whose refusals are audited check the role themselves: give no permission here
    for their pages, so a refused role is recorded there too.
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            actor = current_actor()
            if actor is None:
                return redirect(url_for("web.sign_in", next=request.full_path.rstrip("?")))
            if permission is not None and not permission.allows(actor):
                raise Forbidden(f"The {actor.role} role may not {permission.does}.")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def page(template: str, code: int = 200, /, **values: Any) -> Page:
    """A page, with the trial and the actor every page shows; a page showing a throttled
    ``refusal`` (429) says when to try again (``Retry-After``)."""
    state = app_state()
    refusal = values.get("refusal")
    headers = (
        {"Retry-After": str(refusal.retry_after)} if isinstance(refusal, TooManyRequests) else {}
    )
    return (
        render_template(
            template,
            trial=state.ctx.definition,
            actor=current_actor(),
            language=page_language(),
            **values,
        ),
        code,
        headers,
    )


def form_submission(schema: Any, parsed: Any) -> Submission[Any]:
    """A form's values as the API's JSON would carry them, validated by the API's schema."""
    return Submission(parsed=parsed, validate=lambda value: validate_with(schema, value))


def new_form_key() -> str:
    """A one-time key for a form: sending the form twice (a double click) acts once."""
    return uuid.uuid4().hex


def once(
    operation: str,
    actor: Actor,
    action: Callable[[Session], tuple[int, Mapping[str, Any]]],
    refusal: Refusal | None = None,
) -> Outcome:
    """Run a form's ``action`` in one transaction, at most once for the form's one-time key
    (the API's idempotency service: the first outcome is shown again for a second click)."""
    state = app_state()
    key = request.form.get("form_key") or None
    fields = sorted(
        (name, value)
        for name, value in request.form.items(multi=True)
        if name not in ("csrf_token", "form_key", "password")
    )
    digest = request_digest(
        b"web", request.path.encode("utf-8", "replace"), repr(fields).encode("utf-8", "replace")
    )
    with state.db.transaction() as session:
        return perform_once_or_refuse(
            session,
            state.ctx,
            actor,
            operation,
            key,
            "form_key",
            digest,
            lambda: action(session),
            refusal,
        )


def field_errors(problem: Problem) -> dict[str, list[str]]:
    """A refusal's messages by form field (the API's dotted paths)."""
    return dict(problem.extra.get("errors") or {})


def form_with_refusal(template: str, problem: Problem, /, **values: Any) -> Page:
    """The form's page again with the refusal, its field errors and a new one-time key (the
    corrected form is a new request)."""
    return page(
        template,
        problem.status,
        form_key=new_form_key(),
        errors=field_errors(problem),
        refusal=problem,
        **values,
    )


def outcome_page(outcome: Outcome, shown: Callable[[dict[str, Any]], Any]) -> Any:
    """``shown(answer)`` for a form's outcome that succeeded; else the error page (a second
    click is shown the refusal the first one got)."""
    answer = json.loads(outcome.text)
    if outcome.status >= 400:
        return page("error.html", outcome.status, title=answer["title"], detail=answer["detail"])
    return shown(answer)


#: A refused signature beyond the throttle's limit (the sign-in's words, for a signature).
SIGNATURES_THROTTLED = N_(
    "Too many wrong passwords from this computer: wait %(wait)s seconds, then sign again. "
    "The right password is always accepted."
)


def signed(meaning: str, act: Callable[[Signature], T]) -> T:
    """Run ``act`` with the electronic signature the form carries: the signer's password
    again (the ``password`` field) and what signing means (``meaning``, an English text the
    audit entry records with who and when; the page shows it translated).

    The service checks the signature and audits its refusal like any other. A refused one
    also counts as a failed sign-in of this client (:mod:`randomizer.services.throttling`:
    growing delays, then 429 with ``Retry-After``), so that a password is guessed no faster
    here than at the sign-in; the right password is always accepted. Every refusal is raised
    for the page to show again, its field errors by :func:`field_errors`.
    """
    signature = Signature(meaning=meaning, password=request.form.get("password", ""))
    try:
        return act(signature)
    except SignatureRefused:
        wait = app_state().throttle.failed(request.remote_addr)
        if wait is not None:
            raise TooManyRequests(gettext(SIGNATURES_THROTTLED, wait=wait), wait) from None
        raise
