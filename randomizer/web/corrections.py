"""Corrections (URS §6a, R-FIX), for the admin: find a randomised participant of any site,
then flag it randomised in error or record its right screening factors beside the original.

Each form asks for the reason, a confirmation and the admin's password again (an electronic
signature, recorded in the correction's audit entry with its meaning, who and when). The
services (:mod:`randomizer.services.lifecycle`) check the role, the participant's state, the
input and the signature, and audit every refusal; a double click acts once (the one-time form
key). The admin is blinded: these pages show what the API's answers hold, never an arm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import request
from flask_babel import gettext
from sqlalchemy.orm import Session

from randomizer import roles
from randomizer.errors import Problem
from randomizer.models import Participant
from randomizer.services import lifecycle
from randomizer.services.idempotency import Outcome
from randomizer.services.users import Signature
from randomizer.state import app_state
from randomizer.web.base import (
    N_,
    bp,
    current_actor,
    field_errors,
    form_submission,
    new_form_key,
    once,
    outcome_page,
    page,
    signed,
    signed_in,
)

#: What each correction's signature means, recorded in its audit entry with who and when.
FLAG_MEANING = N_("I flag this participant as randomised in error, for the reason given.")
STRATUM_MEANING = N_(
    "I record these screening factors for this participant, beside the original ones, for "
    "the reason given."
)
UNCONFIRMED = N_("Confirm the correction before signing it.")


@bp.get("/corrections")
@signed_in(roles.CORRECT_PARTICIPANT)
def corrections() -> Any:
    """Find a participant of any site by its screening number; links to its corrections."""
    state, actor = app_state(), current_actor()
    assert actor is not None
    number = request.args.get("screening_number", "").strip()[:32]
    found = refusal = None
    if number:
        try:
            with state.db.reading() as session:
                found = lifecycle.correction_view(session, state.ctx, actor, number)
        except Problem as problem:
            refusal = problem
    status = refusal.status if refusal is not None else 200
    return page("corrections.html", status, number=number, p=found, refusal=refusal)


@bp.route("/participants/<screening_number>/flag-error", methods=["GET", "POST"])
@signed_in()
def flag_error(screening_number: str) -> Any:
    """Flag a participant randomised in error (its slot stays consumed). The role is
    checked, and a refusal audited, by the service."""
    state = app_state()

    def body() -> dict[str, Any]:
        return {"reason": request.form.get("reason", "").strip()}

    def change(
        session: Session, actor: roles.Actor, body: dict[str, Any], signature: Signature
    ) -> Participant:
        submission = form_submission(state.schemas.reason(), body)
        return lifecycle.change_participant_status(
            session, state.ctx, actor, screening_number, lifecycle.FLAG_ERROR, submission, signature
        )

    return _correction(
        "flag_error.html",
        screening_number,
        "web.participants.flag_error",
        lifecycle.FLAG_ERROR.action,
        FLAG_MEANING,
        body,
        change,
    )


@bp.route("/participants/<screening_number>/correct-stratum", methods=["GET", "POST"])
@signed_in()
def correct_stratum(screening_number: str) -> Any:
    """Record the right screening factors, as the trial defines them, beside the original:
    the stratum used at randomisation never changes. The role is checked, and a refusal
    audited, by the service."""
    state = app_state()
    factors = state.ctx.definition.screening_factors()

    def body() -> dict[str, Any]:
        return {
            "strata": {
                factor.id: request.form.get(f"strata.{factor.id}", "") for factor in factors
            },
            "reason": request.form.get("reason", "").strip(),
        }

    def change(
        session: Session, actor: roles.Actor, body: dict[str, Any], signature: Signature
    ) -> Participant:
        submission = form_submission(state.schemas.stratum_correction(), body)
        return lifecycle.correct_stratum(
            session, state.ctx, actor, screening_number, submission, signature
        )

    return _correction(
        "correct_stratum.html",
        screening_number,
        "web.participants.correct_stratum",
        lifecycle.STRATUM_CORRECTED,
        STRATUM_MEANING,
        body,
        change,
        factors=factors,
    )


def _correction(
    template: str,
    screening_number: str,
    operation: str,
    action: str,
    meaning: str,
    body: Callable[[], dict[str, Any]],
    change: Callable[[Session, roles.Actor, dict[str, Any], Signature], Participant],
    **more: Any,
) -> Any:
    """A correction's form (GET), or the signed correction (POST) once per form key (for
    ``operation``; a refusal of the key audited as ``action``'s), then the participant as
    corrected; the form again with any refusal."""
    state, actor = app_state(), current_actor()
    assert actor is not None

    def show(status: int, errors: dict[str, list[str]], **shown: Any) -> Any:
        with state.db.reading() as session:
            # An admin's view; any other role is refused here (403) before seeing anything.
            view = lifecycle.correction_view(session, state.ctx, actor, screening_number)
        values = {name: value for name, value in request.form.items() if name != "password"}
        if request.method == "GET":
            values = {f"strata.{name}": level for name, level in view["strata"].items()}
        return page(
            template,
            status,
            p=view,
            meaning=meaning,
            values={**values, "form_key": new_form_key()},
            errors=errors,
            **more,
            **shown,
        )

    if request.method == "GET":
        return show(200, {})
    if request.form.get("confirm") != "yes":
        return show(422, {"confirm": [gettext(UNCONFIRMED)]})
    form = body()

    def act(signature: Signature) -> Outcome:
        def corrected(session: Session) -> tuple[int, dict[str, Any]]:
            change(session, actor, form, signature)
            return 200, lifecycle.correction_view(session, state.ctx, actor, screening_number)

        return once(
            operation,
            actor,
            corrected,
            lifecycle.lifecycle_refusal(action, screening_number),
        )

    try:
        outcome = signed(meaning, act)
    except Problem as problem:
        return show(problem.status, field_errors(problem), refusal=problem)
    return outcome_page(
        outcome, lambda answer: page("corrected.html", 200, p=answer, meaning=meaning)
    )
