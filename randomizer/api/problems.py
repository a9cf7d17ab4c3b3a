"""One error shape, mapped in one place: RFC 9457 problem details (URS §8).

Domain errors (:class:`randomizer.errors.Problem`) carry their own status and type;
werkzeug's HTTP errors (unknown route, wrong method, oversized body) and flask-smorest's
validation errors are mapped here; anything unexpected becomes a 500 problem whose detail
reveals nothing (the traceback goes to the log only).

Under ``/api/`` the answer is always ``application/problem+json``. On any other path (the web
pages) the same problem is shown as an HTML page, by the renderer the pages register
(:data:`ERROR_PAGE`, :func:`randomizer.web.base.error_page`): the mapping stays here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, has_request_context, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from randomizer.db import DATABASE_UNAVAILABLE
from randomizer.errors import Problem, ServiceUnavailable, TooManyRequests, flatten_errors
from randomizer.rendering import render_json

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

#: Problem type (URS §8) and title for werkzeug's HTTP errors.
_HTTP_TYPES = {
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    # gunicorn's own refusals (randomizer.serving), before the application runs.
    414: ("uri-too-long", "Request line too long"),
    422: ("validation", "Invalid input"),
    431: ("header-fields-too-large", "Request header fields too large"),
}
#: On every answer: never cached (participant data), its content type not to be sniffed.
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
#: What a caller is told of a failure of the server's own: nothing about it.
UNEXPECTED_DETAIL = "The server could not complete the request; nothing was changed."


def problem_types() -> list[str]:
    """Every problem type the service answers with (the document's ``type`` enum)."""
    types = {"about:blank"} | {f"/problems/{name}" for name, _title in _HTTP_TYPES.values()}
    kinds: list[type[Problem]] = [Problem]
    while kinds:
        kind = kinds.pop()
        types.add(f"/problems/{kind.type_name}")
        kinds.extend(kind.__subclasses__())
    return sorted(types)


def add_security_headers(response: Response) -> Response:
    """Every answer: never cached (participant data), its content type not to be sniffed."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def http_problem(status: int, name: str, detail: str) -> dict[str, Any]:
    """The problem details of an HTTP error ``status`` (``name``: its reason phrase), refused
    by the server or the framework rather than by a service: werkzeug's and webargs' errors,
    and gunicorn's own (:mod:`randomizer.serving`). A 5xx says nothing of the failure."""
    if status >= 500:
        return {
            "type": "about:blank",
            "title": "Internal server error",
            "status": status,
            "detail": UNEXPECTED_DETAIL,
        }
    type_name, title = _HTTP_TYPES.get(status, ("validation", name))
    return {"type": f"/problems/{type_name}", "title": title, "status": status, "detail": detail}


def json_response(status: int, text: str) -> Response:
    """A JSON answer: ``application/problem+json`` for errors, ``application/json`` else."""
    return Response(
        text, status=status, mimetype=PROBLEM_JSON if status >= 400 else "application/json"
    )


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A ``application/problem+json`` response for a problem details object."""
    response = json_response(body["status"], render_json(body))
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


#: Seconds a client is asked to wait before retrying after a 503.
RETRY_AFTER_SECONDS = 5
#: Where ``app.extensions`` keeps the web pages' error page: ``render(body, generic)`` gives
#: the HTML answer to a problem on a path outside :data:`API_PREFIX` (``generic``: raised by
#: the framework or the server itself, not by a service, so the page uses its own words).
ERROR_PAGE = "sealroom.error_page"
API_PREFIX = "/api/"
ErrorPage = Callable[[dict[str, Any], bool], Response]


def answer_problem(
    body: dict[str, Any], headers: dict[str, str] | None = None, *, generic: bool = False
) -> Response:
    """The answer to a problem: problem details under ``/api/`` (and outside a request), the
    web pages' HTML error page on their paths (problem details again if that page fails)."""
    render: ErrorPage | None = (
        current_app.extensions.get(ERROR_PAGE) if has_request_context() else None
    )
    if render is not None and not request.path.startswith(API_PREFIX):
        try:
            response = render(body, generic)
        except Exception:  # the page itself failed: its problem details still answer
            log.exception("the error page could not be rendered")
        else:
            for name, value in (headers or {}).items():
                response.headers[name] = value
            return response
    return problem_response(body, headers)


def problem_headers(problem: Problem) -> dict[str, str] | None:
    """The headers a refusal's answer carries (``WWW-Authenticate``, ``Retry-After``)."""
    if problem.status == 401:
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(problem, TooManyRequests):
        return {"Retry-After": str(problem.retry_after)}
    if problem.status == 503:
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return None


def handle_problem(problem: Problem) -> Response:
    """Render a domain refusal."""
    return answer_problem(problem.body(), problem_headers(problem))


def database_unavailable() -> Response:
    """The 503 problem (with ``Retry-After``) of a database that is busy or unavailable.

    Nothing was changed: the transaction that met the error was rolled back before COMMIT
    (a connection lost during COMMIT is :class:`randomizer.errors.CommitOutcomeUnknown`).
    """
    return handle_problem(_unavailable())


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The database is busy or unavailable; nothing was changed. Try again shortly "
        "(with the same Idempotency-Key, if you sent one)."
    )


def handle_database_unavailable(error: Exception) -> Response:
    """The database is busy (SQLite's write lock), gone or failing over: 503, try again."""
    log.warning("database unavailable: %s", type(error).__name__)
    problem = _unavailable()
    return answer_problem(problem.body(), problem_headers(problem), generic=True)


def handle_http_exception(error: HTTPException) -> Response:
    """Render werkzeug's and webargs' HTTP errors as problem details."""
    status = error.code or 500
    if status >= 500:
        return handle_unexpected(error)
    data = getattr(error, "data", None) or {}
    body = http_problem(status, error.name, error.description or error.name)
    messages = data.get("messages")
    if messages is not None:
        # webargs nests messages under the location ("json", "query"); drop that level.
        if isinstance(messages, dict) and len(messages) == 1:
            ((location, inner),) = messages.items()
            if location in ("json", "query", "querystring", "view_args", "path", "headers"):
                messages = inner
        body["errors"] = flatten_errors(messages)
        body["detail"] = "The request is not valid."
    headers = {}
    if status == 405 and getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
    return answer_problem(body, headers, generic=True)


def handle_unexpected(error: BaseException) -> Response:
    """A bug: log it, tell the caller nothing about it."""
    log.exception("unexpected error", exc_info=error)
    return answer_problem(
        http_problem(500, "Internal Server Error", UNEXPECTED_DETAIL), generic=True
    )


class RenderingJSONProvider(DefaultJSONProvider):
    """Flask's JSON (what ``@blp.response`` answers with) in the service's one rendering."""

    def dumps(self, obj: Any, **_kwargs: Any) -> str:
        return render_json(obj)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """``jsonify``'s answer: the rendering alone (Flask's default appends a newline)."""
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(self.dumps(obj), mimetype=self.mimetype)


def init_app(app: Flask) -> None:
    """Register the handlers (after flask-smorest's, which they replace) and the rendering."""
    app.json = RenderingJSONProvider(app)
    app.register_error_handler(Problem, handle_problem)
    for error in DATABASE_UNAVAILABLE:
        app.register_error_handler(error, handle_database_unavailable)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
    app.after_request(add_security_headers)
