"""Shipment pages (R-SHIP, R-KIT-3): the pharmacist's shipments to the site (in transit,
received) and their receipt kit by kit; the admin's list of every shipment, a new shipment
(a site and a count, or a site and a lot), the dispatch of a resupply the service
requested, and the quarantine or release of a kit. Each form calls the same service as the
API's route, once per form key; the pages list kit numbers only, never an arm."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from flask import request
from sqlalchemy.orm import Session

from randomizer import roles
from randomizer.domain.supply import RECEIPT_STATUSES
from randomizer.errors import Problem
from randomizer.models import SHIPMENT_IN_TRANSIT, SHIPMENT_REQUESTED, SHIPMENT_STATUSES
from randomizer.roles import Actor
from randomizer.schemas import (
    QuarantineChangeSchema,
    QuarantineRequestSchema,
    ReceiptRequestSchema,
    ShipmentRequestSchema,
    ShipmentSchema,
)
from randomizer.services import shipments
from randomizer.services.refusals import Refusal
from randomizer.state import app_state
from randomizer.web.base import (
    Page,
    bp,
    current_actor,
    field_errors,
    form_submission,
    new_form_key,
    once,
    page,
    signed_in,
)
from randomizer.web.participants import typed

#: The receipt form's field of each kit: ``kits.<kit number>``, the API's error path.
KIT_FIELD = "kits."


def _signed_actor() -> Actor:
    actor = current_actor()
    assert actor is not None
    return actor


def _acted(
    operation: str,
    actor: Actor,
    act: Callable[[Session], tuple[int, dict[str, Any]]],
    refusal: Refusal,
    shown_again: Callable[..., Any],
) -> Any:
    """Run a form's action once; a refusal is shown on the form's page (``shown_again``,
    with the errors by field), a replayed refusal on the error page; else the answer."""
    try:
        outcome = once(operation, actor, act, refusal)
    except Problem as problem:
        return shown_again(problem.status, errors=field_errors(problem), refusal=problem)
    answer = json.loads(outcome.text)
    if outcome.status >= 400:
        return page("error.html", outcome.status, title=answer["title"], detail=answer["detail"])
    return answer


def _listing(code: int = 200, /, **values: Any) -> Page:
    """The shipments the user may see (a pharmacist: the site's, once sent), newest first."""
    state, actor = app_state(), _signed_actor()
    with state.db.reading() as session:
        listed = shipments.list_shipments(session, actor)
    values.setdefault("errors", {})
    values.setdefault("values", {})
    return page(
        "shipments.html",
        code,
        shipments=list(reversed(listed)),
        # A section per status (a site sees its shipments once sent: two of them).
        sections=SHIPMENT_STATUSES,
        form_key=new_form_key(),
        # Each dispatch button its own one-time key (a key is for one request).
        dispatch_keys={s.id: new_form_key() for s in listed if s.status == SHIPMENT_REQUESTED},
        **values,
    )


@bp.get("/shipments")
@signed_in(roles.READ_SHIPMENTS)
def shipment_list() -> Any:
    """The pharmacist's shipments in transit and received; for an admin, every shipment, the
    form of a new one and the dispatch of a requested resupply."""
    return _listing()


@bp.post("/shipments")
@signed_in()
def shipment_create() -> Any:
    """Send kits from the depot: a site and a count (balanced across arms by the service) or
    a whole lot. The service checks the role, so a refused one is audited like the API's."""
    state, actor = app_state(), _signed_actor()
    body: dict[str, Any] = {"site": request.form.get("site", "").strip()}
    count, lot = request.form.get("count", "").strip(), request.form.get("lot", "").strip()
    if count:
        body["count"] = typed("integer", count)
    if lot:
        body["lot"] = lot
    submission = form_submission(ShipmentRequestSchema(), body)

    def act(session: Session) -> tuple[int, dict[str, Any]]:
        result = shipments.create_shipment(session, state.ctx, actor, submission)
        return 201, ShipmentSchema().dump(result)

    answer = _acted(
        "web.shipments.create",
        actor,
        act,
        shipments.shipment_refusal("create"),
        lambda code, **shown: _listing(code, values=request.form.to_dict(), **shown),
    )
    if not isinstance(answer, dict):
        return answer
    return _listing(201, created=answer)


@bp.post("/shipments/<shipment_id>/dispatch")
@signed_in()
def shipment_dispatch(shipment_id: str) -> Any:
    """Send a resupply the service requested (the admin's button on the list)."""
    state, actor = app_state(), _signed_actor()

    def act(session: Session) -> tuple[int, dict[str, Any]]:
        result = shipments.dispatch_shipment(session, state.ctx, actor, shipment_id)
        return 200, ShipmentSchema().dump(result)

    answer = _acted(
        "web.shipments.dispatch",
        actor,
        act,
        shipments.shipment_refusal("dispatch", shipment_id),
        lambda code, **shown: _listing(code, **shown),
    )
    if not isinstance(answer, dict):
        return answer
    return _listing(200, dispatched=answer)


def _shipment_page(shipment_id: str, code: int = 200, /, **values: Any) -> Page:
    state, actor = app_state(), _signed_actor()
    with state.db.reading() as session:
        shown = shipments.get_shipment(session, actor, shipment_id)
    values.setdefault("errors", {})
    values.setdefault("chosen", {})
    return page(
        "shipment.html",
        code,
        shipment=shown,
        receivable=shown.status == SHIPMENT_IN_TRANSIT and actor.role == roles.PHARMACIST,
        receipt_statuses=RECEIPT_STATUSES,
        form_key=new_form_key(),
        **values,
    )


@bp.get("/shipments/<shipment_id>")
@signed_in(roles.READ_SHIPMENTS)
def shipment(shipment_id: str) -> Any:
    """One shipment and its kit numbers; the pharmacist's receipt form while in transit."""
    return _shipment_page(shipment_id)


def _by_kit(errors: dict[str, list[str]]) -> dict[str, list[str]]:
    """Errors of a kit's key or status (``kits.<n>.key``, ``kits.<n>.value``) beside it."""
    shown: dict[str, list[str]] = {}
    for name, messages in errors.items():
        if name.startswith(KIT_FIELD) and name.count(".") > 1:
            name = name.rsplit(".", 1)[0]
        shown.setdefault(name, []).extend(messages)
    return shown


@bp.post("/shipments/<shipment_id>/receive")
@signed_in()
def shipment_receive(shipment_id: str) -> Any:
    """Receive a shipment: every kit in transit exactly once, ``available``, ``damaged`` or
    ``lost`` (the service checks each kit, the role and the site, and audits a refusal)."""
    state, actor = app_state(), _signed_actor()
    chosen = {
        name.removeprefix(KIT_FIELD): value
        for name, value in request.form.items()
        if name.startswith(KIT_FIELD)
    }
    submission = form_submission(ReceiptRequestSchema(), {"kits": chosen})

    def act(session: Session) -> tuple[int, dict[str, Any]]:
        result = shipments.receive_shipment(session, state.ctx, actor, shipment_id, submission)
        return 200, ShipmentSchema().dump(result)

    def shown_again(code: int, *, errors: dict[str, list[str]], refusal: Problem) -> Any:
        values = {"errors": _by_kit(errors), "refusal": refusal, "chosen": chosen}
        try:
            return _shipment_page(shipment_id, code, **values)
        except Problem:  # not a shipment this user may see: the refusal alone
            return page("error.html", code, title=refusal.title, detail=refusal.detail)

    answer = _acted(
        "web.shipments.receive",
        actor,
        act,
        shipments.shipment_refusal("receive", shipment_id),
        shown_again,
    )
    if not isinstance(answer, dict):
        return answer
    tally = Counter((answer.get("received") or {}).values())
    return _shipment_page(shipment_id, received=answer, tally=dict(sorted(tally.items())))


@bp.route("/admin/quarantine", methods=["GET", "POST"])
@signed_in()
def quarantine() -> Any:
    """Quarantine a kit in stock (a temperature excursion) or release it, with a reason.

    The form's role is checked by the service (a refused one is audited); the empty form is
    shown to an admin only.
    """
    state, actor = app_state(), _signed_actor()
    values = {"form_key": new_form_key()}
    if request.method == "GET":
        roles.QUARANTINE_KITS.check(actor)
        return page("quarantine.html", values=values, errors={})
    values = {**request.form.to_dict(), **values}
    kit_number = request.form.get("kit_number", "").strip()
    action = request.form.get("action", "")
    body = {"reason": request.form.get("reason", "")}
    submission = form_submission(QuarantineRequestSchema(), body)

    def act(session: Session) -> tuple[int, dict[str, Any]]:
        change = shipments.set_quarantine(
            session, state.ctx, actor, kit_number, submission, quarantine=action != "release"
        )
        return 200, QuarantineChangeSchema().dump(change)

    answer = _acted(
        f"web.kits.{'release' if action == 'release' else 'quarantine'}",
        actor,
        act,
        shipments.quarantine_refusal(kit_number),
        lambda code, **shown: page("quarantine.html", code, values=values, **shown),
    )
    if not isinstance(answer, dict):
        return answer
    fresh = {"form_key": new_form_key()}
    return page("quarantine.html", values=fresh, errors={}, changed=answer)
