"""Emergency unblinding (URS §6): one page that says what will happen and who will be told,
asks for the reason, the event's reference, a confirmation and the requester's password (an
electronic signature), then shows the arm once, with the receipt to keep.

Never replayed (URS §8): every confirmed form is a new, audited unblinding; the arm is shown
only after the transaction holding its record has committed.
"""

from __future__ import annotations

from typing import Any

from flask import request

from randomizer.errors import Problem
from randomizer.services.participants import find_participant, participant_view
from randomizer.services.unblinding import UnblindingResult, unblind_participant
from randomizer.services.users import Signature
from randomizer.state import app_state
from randomizer.web.base import (
    N_,
    bp,
    current_actor,
    field_errors,
    form_submission,
    page,
    signed,
    signed_in,
)

#: What the signature means, recorded in the audit entry with who and when.
MEANING = N_("I request the emergency unblinding of this participant for the reason given.")


@bp.route("/participants/<screening_number>/unblind", methods=["GET", "POST"])
@signed_in()
def unblind(screening_number: str) -> Any:
    """The unblinding page. The role and the site are checked (and audited) by the service."""
    state, actor = app_state(), current_actor()
    assert actor is not None
    definition = state.ctx.definition
    with state.db.reading() as session:
        view = participant_view(
            session, state.ctx, find_participant(session, actor, screening_number)
        )
    values = {name: value for name, value in request.form.items() if name != "password"}

    def show(status: int, errors: dict[str, list[str]], **more: Any) -> Any:
        return page(
            "unblind.html",
            status,
            p=view,
            reasons=definition.unblinding_reasons,
            meaning=MEANING,
            notified=state.settings.notify_unblinding,
            values=values,
            errors=errors,
            **more,
        )

    if request.method == "GET":
        return show(200, {})
    if request.form.get("confirm") != "yes":
        return show(422, {"confirm": ["Confirm that you want to break the blind."]})
    body = {
        "reason": request.form.get("reason", ""),
        "event_reference": request.form.get("event_reference", "").strip(),
        "detail": request.form.get("detail", "").strip() or None,
    }
    submission = form_submission(state.schemas.unblinding(), body)

    def act(signature: Signature) -> UnblindingResult:
        with state.db.transaction() as session:
            return unblind_participant(
                session, state.ctx, actor, screening_number, submission, signature
            )

    try:
        result = signed(MEANING, act)
    except Problem as problem:
        return show(problem.status, field_errors(problem), refusal=problem)
    # Committed: the record exists, the arm may be shown.
    return page("unblinded.html", result=result, p=view)
