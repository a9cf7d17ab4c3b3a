"""A wrong method on an operation whose refusals are audited is audited too (URS §7).

``PUT /participants/<sn>/randomize`` by an authenticated user is a refused randomisation like
any other, although Flask refuses it (405) before any view runs. A view class whose
refusals are audited names how, as ``refusal_of(view_args)``; before Flask raises its 405,
this hook records that refusal for an authenticated caller, in a transaction of its own.
"""

from __future__ import annotations

from flask import Flask, current_app, request
from werkzeug.exceptions import MethodNotAllowed as RoutingMethodNotAllowed
from werkzeug.exceptions import NotFound as RoutingNotFound
from werkzeug.routing import RequestRedirect

from randomizer.api.auth import optional_actor
from randomizer.errors import MethodNotAllowed
from randomizer.services.refusals import record_refusal
from randomizer.state import app_state


def _audit_method_refusal() -> None:
    refused = request.routing_exception
    if not isinstance(refused, RoutingMethodNotAllowed):
        return
    adapter = current_app.url_map.bind_to_environ(request.environ)
    for method in sorted(refused.valid_methods or ()):
        try:
            endpoint, view_args = adapter.match(method=method)
        except (RoutingMethodNotAllowed, RoutingNotFound, RequestRedirect):
            continue
        view = current_app.view_functions.get(endpoint)
        refusal_of = getattr(getattr(view, "view_class", None), "refusal_of", None)
        if refusal_of is None:
            return
        actor = optional_actor()
        if actor is None:
            return  # only refusals by an authenticated user are audited
        problem = MethodNotAllowed(f"{request.method} is not allowed here.")
        state = app_state()
        with state.db.transaction() as session:
            record_refusal(
                session, state.ctx, actor, refusal_of(view_args), problem, site=actor.site
            )
        return


def init_app(app: Flask) -> None:
    """Register the hook (before Flask raises the routing error)."""
    app.before_request(_audit_method_refusal)
