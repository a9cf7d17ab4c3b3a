"""Coordinator and investigator pages: the site's participants, screening, the randomisation
checklist and its printable result, dispensing visits; the medical monitor's and sponsor's
search across sites. Never an arm: the pages show what the API's answers hold."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import request
from sqlalchemy.orm import Session

from randomizer import roles
from randomizer.domain import TrialDefinition
from randomizer.errors import Problem, ValidationFailed
from randomizer.schemas import DispensingSchema, ParticipantSchema, RandomizationSchema
from randomizer.services.dispensing import dispense_kits, dispense_refusal
from randomizer.services.participants import (
    find_participant,
    list_participants,
    participant_view,
    randomization_refusal,
    randomize_participant,
    screen_participant,
    stratum_to_confirm,
)
from randomizer.state import app_state
from randomizer.web.base import (
    bp,
    current_actor,
    field_errors,
    form_submission,
    form_with_refusal,
    new_form_key,
    once,
    outcome_page,
    page,
    signed_in,
)

_INTEGER = re.compile(r"\A[+-]?\d{1,15}\Z")
_DECIMAL = re.compile(r"\A[+-]?\d{1,15}(\.\d{1,15})?\Z")


def typed(kind: str, text: str) -> Any:
    """A form's text as the API's JSON value of ``kind``; text that is not one stays text,
    so the API's schema refuses it with its own message."""
    text = text.strip()
    if kind == "boolean":
        return {"yes": True, "no": False}.get(text, text)
    if kind == "integer" and _INTEGER.fullmatch(text):
        return int(text)
    if kind == "decimal" and _DECIMAL.fullmatch(text):
        try:
            return Decimal(text)
        except InvalidOperation:
            return text
    return text


def checklist(definition: TrialDefinition) -> list[dict[str, Any]]:
    """Every eligibility rule in the protocol's words, each with the answers it needs (a field
    shown once, under the first rule that reads it)."""
    shown: set[str] = set()
    fields = {spec.id: spec for spec in definition.eligibility_fields}
    items = []
    for rule in definition.eligibility_rules:
        asks = []
        for condition in rule.conditions:
            if condition.field not in shown:
                shown.add(condition.field)
                asks.append(fields[condition.field])
        items.append({"rule": rule, "fields": asks})
    rest = [spec for spec in definition.eligibility_fields if spec.id not in shown]
    if rest:
        items.append({"rule": None, "fields": rest})
    return items


@bp.get("/participants")
@signed_in(roles.READ_PARTICIPANT)
def participants() -> Any:
    """The participants the user may see (their site's; every site's for the sponsor side)."""
    state, actor = app_state(), current_actor()
    prefix = request.args.get("q", "").strip()[:32]
    if prefix and not re.fullmatch(r"[A-Za-z0-9-]{1,32}", prefix):
        raise ValidationFailed({"q": ["1 to 32 of A-Z a-z 0-9 -."]})
    with state.db.reading() as session:
        listing = list_participants(session, state.ctx, actor, prefix)
    return page("participants.html", participants=listing, q=prefix)


@bp.route("/participants/new", methods=["GET", "POST"])
@signed_in(roles.SCREEN)
def screen() -> Any:
    """Screen a participant at the user's own site."""
    state, actor = app_state(), current_actor()
    assert actor is not None
    definition = state.ctx.definition
    values = {"screened_on": state.ctx.today().isoformat(), "form_key": new_form_key()}
    if request.method == "GET":
        return page("screen.html", values=values, errors={})
    # A new one-time key for the form shown again: the corrected form is a new request.
    values = {**values, **request.form.to_dict(), "form_key": new_form_key()}
    body = {
        "screening_number": request.form.get("screening_number", "").strip(),
        "site": actor.site,
        "screened_on": request.form.get("screened_on", "").strip(),
        "strata": {
            factor.id: request.form.get(f"strata.{factor.id}", "")
            for factor in definition.screening_factors()
        },
    }
    schema = state.schemas.screening()

    def act(session: Session) -> tuple[int, dict[str, Any]]:
        screening = form_submission(schema, body).load()
        participant = screen_participant(session, state.ctx, actor, screening)
        return 201, ParticipantSchema().dump(participant_view(session, state.ctx, participant))

    try:
        outcome = once("web.participants.screen", actor, act)
    except ValidationFailed as problem:
        return page("screen.html", 422, values=values, errors=field_errors(problem))
    except Problem as problem:
        return page("screen.html", problem.status, values=values, errors={}, refusal=problem)
    return outcome_page(outcome, lambda answer: page("screened.html", 201, participant=answer))


@bp.get("/participants/<screening_number>")
@signed_in(roles.READ_PARTICIPANT)
def participant(screening_number: str) -> Any:
    """One participant: status, stratum, numbers, kits and visits; never an arm."""
    state, actor = app_state(), current_actor()
    with state.db.reading() as session:
        found = find_participant(session, actor, screening_number)
        view = participant_view(session, state.ctx, found)
    return page("participant.html", p=view, form_key=new_form_key(), errors={})


@bp.route("/participants/<screening_number>/randomise", methods=["GET", "POST"])
@signed_in()
def randomise(screening_number: str) -> Any:
    """The protocol's checklist, every rule answered, the stratum confirmed; then the result.

    The role is checked by the service, so a refused role is audited like the API's.
    """
    state, actor = app_state(), current_actor()
    assert actor is not None
    definition = state.ctx.definition
    with state.db.reading() as session:
        found = find_participant(session, actor, screening_number)
        view = participant_view(session, state.ctx, found)
        stratum = (
            stratum_to_confirm(session, state.ctx, found) if view["status"] == "screened" else None
        )
    values = {"form_key": new_form_key()}

    def show(status: int, errors: dict[str, list[str]], **more: Any) -> Any:
        return page(
            "randomise.html",
            status,
            p=view,
            stratum=stratum,
            checklist=checklist(definition),
            values=values,
            errors=errors,
            **more,
        )

    if request.method == "GET":
        return show(200, {})
    values = {**values, **request.form.to_dict(), "form_key": new_form_key()}
    if request.form.get("confirm_stratum") != "yes":
        return show(422, {"confirm_stratum": ["Confirm the stratum before randomising."]})
    body = {
        "weight_kg": typed("decimal", request.form.get("weight_kg", "")),
        "eligibility": {
            spec.id: typed(spec.type, request.form[f"eligibility.{spec.id}"])
            for spec in definition.eligibility_fields
            if request.form.get(f"eligibility.{spec.id}", "").strip()
        },
    }
    submission = form_submission(state.schemas.randomization(), body)

    def act(session: Session) -> tuple[int, dict[str, Any]]:
        result = randomize_participant(session, state.ctx, actor, screening_number, submission)
        return 201, RandomizationSchema().dump(result)

    try:
        outcome = once(
            "web.participants.randomize", actor, act, randomization_refusal(screening_number)
        )
    except ValidationFailed as problem:
        return show(422, field_errors(problem), refusal=problem)
    except Problem as problem:
        return show(problem.status, {}, refusal=problem)
    return outcome_page(outcome, lambda answer: page("randomised.html", 201, result=answer, p=view))


@bp.post("/participants/<screening_number>/dispense")
@signed_in()
def dispense(screening_number: str) -> Any:
    """Dispense a visit's kits; the slip prints. The role is checked (and audited) by the
    service."""
    state, actor = app_state(), current_actor()
    assert actor is not None
    body = {
        "visit": request.form.get("visit", ""),
        "weight_kg": typed("decimal", request.form.get("weight_kg", "")),
    }
    submission = form_submission(state.schemas.dispensing(), body)

    def act(session: Session) -> tuple[int, dict[str, Any]]:
        result = dispense_kits(session, state.ctx, actor, screening_number, submission)
        return 201, DispensingSchema().dump(result)

    try:
        outcome = once("web.participants.dispense", actor, act, dispense_refusal(screening_number))
    except Problem as problem:
        with state.db.reading() as session:
            view = participant_view(
                session, state.ctx, find_participant(session, actor, screening_number)
            )
        return form_with_refusal("participant.html", problem, p=view)
    return outcome_page(
        outcome,
        lambda answer: page(
            "dispensed.html", 201, result=answer, screening_number=screening_number
        ),
    )
